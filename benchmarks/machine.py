"""What a benchmark ran on: CPU, cores, memory, GPU, software versions and the git commit."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from alpr.paths import repo_root

PACKAGES = ("onnxruntime", "tritonclient", "nvidia-pytriton", "numpy", "opencv-python-headless")


def _first_value(path: Path, key: str) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in query.stdout.splitlines() if line.strip()] if query.returncode == 0 else []


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_machine() -> dict[str, object]:
    """CPU model, logical and usable cores, memory, GPUs (empty without nvidia-smi), OS and package versions."""
    memory_kib = _first_value(Path("/proc/meminfo"), "MemTotal")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _first_value(Path("/proc/cpuinfo"), "model name") or platform.processor() or "unknown",
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(int(memory_kib.split()[0]) / 2**20, 1) if memory_kib else None,
        "gpus": _gpus(),
        "os": platform.platform(),
        "versions": _versions(),
    }


def git_commit() -> str:
    """``HEAD`` of the checkout, with ``+uncommitted changes`` when the tree differs from it."""
    root = str(repo_root())
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git unavailable)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" +uncommitted changes" if status.stdout.strip() else "")
