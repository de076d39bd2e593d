"""How the code is laid out: no import cycles, the contract named once, and an installed package that serves."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alpr import spec
from alpr.paths import repo_root

ROOT = repo_root()
PACKAGES = ("alpr", "engines", "export", "benchmarks", "ensemble")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, at any level (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def test_no_module_imports_itself_through_others() -> None:
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages are built, not a cycle.
    for name in graph:
        graph[name] = {other for other in graph[name] if not other.startswith(f"{name}.")}
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append([*trail[trail.index(other) :], other])
            elif other not in state:
                visit(other, [*trail, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, [" -> ".join(cycle) for cycle in cycles]


# Definitions of the contract: the ensemble's output names, the version directory, the TensorRT platform name and
# the config reader. Each may be written in one module only; every other module imports it.
CONTRACT_DEFINITIONS = {
    "output names": r'\(\s*"boxes",\s*"det_scores",\s*"texts",\s*"text_scores"\s*\)',
    "version directory": r'^\s*(MODEL_)?VERSION\s*=\s*"1"\s*$',
    "TensorRT platform": r'=\s*"tensorrt_plan"',
    "config reader": r"^def read_config\(",
    "step tensor names": r'"(num_dets|det_boxes|plate_boxes|plate_scores|rectified)"',
    "step tensors": r"^STEP_TENSORS\b",
}


@pytest.mark.parametrize("definition", list(CONTRACT_DEFINITIONS))
def test_the_contract_is_defined_once(definition: str) -> None:
    pattern = re.compile(CONTRACT_DEFINITIONS[definition], re.MULTILINE)
    holders = [str(path.relative_to(ROOT)) for path in project_modules().values() if pattern.search(path.read_text())]
    assert len(holders) == 1, holders


def test_an_installed_package_generates_a_repository_and_serves_it(served_pipeline, tmp_path) -> None:
    """``pip install .`` elsewhere, then, outside the checkout, write a repository and answer through it."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), "."],
        cwd=ROOT,
        check=True,
    )
    (wheel,) = wheel_dir.glob("alpr-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)  # fmt: skip
    script = f"""
import sys
import alpr
assert alpr.__file__.startswith({str(target)!r}), alpr.__file__
from alpr.client import PlateRecogniser
from alpr.serving.repository import write_repository
from alpr.serving.server import TritonServer
import numpy as np
repository = write_repository("repository", "cpu", models_dir={str(served_pipeline.onnx_dir)!r})
with TritonServer(repository, log_path="server.log", startup_timeout_s=300) as server:
    with PlateRecogniser(server.endpoints.grpc_url) as recogniser:
        assert recogniser.recognise(np.full((480, 640, 3), 128, np.uint8)) == []
print("served", sorted(path.name for path in repository.iterdir()))
"""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert spec.ENCODED_ENSEMBLE_NAME in result.stdout and "image_decoder" in result.stdout
