"""The Debian packages that no pip wheel provides, installed by the Makefile for the targets that need them.

``python3 -m alpr.system_packages --prefix .venv [NEED ...]`` checks what is present and fetches what is missing:

- ``fonts``: the plate typefaces (``fonts-opendin``, ``fonts-roadgeek``) that the synthetic renderer draws with, for
  the tests, the sample images, training and evaluation. Serving never needs them.
- ``libb64``: ``libb64.so.0d`` (``libb64-0d``), which perf_analyzer links against, for the tests and benchmarks.

As root it runs ``apt-get install`` (after ``apt-get update`` when the package lists are empty). Otherwise it
downloads the packages with ``apt-get download`` (no root needed) and unpacks them under ``PREFIX/system``, where the
font lookup and the perf_analyzer runner look too; ``sudo -n`` is tried as well. When none of that works it stops at
once with the exact command to run. Standard library only: it runs before the virtual environment has anything.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SystemPackage:
    """A Debian package and the files whose presence shows it is installed (relative to a root folder)."""

    name: str
    need: str
    files: tuple[str, ...]


PACKAGES = (
    SystemPackage("fonts-opendin", "fonts", ("usr/share/fonts/truetype/opendin/OSP-DIN.ttf",)),
    SystemPackage("fonts-roadgeek", "fonts", ("usr/share/fonts/truetype/roadgeek/RG2014D.ttf",)),
    SystemPackage("libb64-0d", "libb64", ("usr/lib/*/libb64.so.0d", "usr/lib/libb64.so.0d")),
)
NEEDS = tuple(dict.fromkeys(package.need for package in PACKAGES))


def local_root(prefix: Path | None = None) -> Path:
    """Where packages unpacked without root go: ``system/`` inside the virtual environment (default: this one)."""
    return Path(prefix if prefix is not None else sys.prefix) / "system"


def installed_file(package: SystemPackage, roots: tuple[Path, ...]) -> Path | None:
    """The first file of ``package`` found under any of ``roots``, or None."""
    for root in roots:
        for pattern in package.files:
            found = sorted(glob.glob(str(root / pattern)))
            if found:
                return Path(found[0])
    return None


def local_library_dirs(prefix: Path | None = None) -> list[Path]:
    """Folders of shared libraries unpacked under ``local_root`` (for ``LD_LIBRARY_PATH``)."""
    root = local_root(prefix)
    return sorted({Path(path).parent for path in glob.glob(str(root / "usr/lib/**/*.so*"), recursive=True)})


def missing(needs: tuple[str, ...], prefix: Path) -> list[SystemPackage]:
    """The packages of ``needs`` found neither in the system nor under ``local_root(prefix)``."""
    roots = (Path("/"), local_root(prefix))
    return [package for package in PACKAGES if package.need in needs and installed_file(package, roots) is None]


def _run(command: list[str]) -> bool:
    print("+ " + " ".join(command), flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(command, env=environment, check=False).returncode == 0


def _apt_install(names: list[str], sudo: list[str]) -> bool:
    install = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *names]
    return _run(install) or (_run([*sudo, "apt-get", "update", "-qq"]) and _run(install))


def _download_and_unpack(names: list[str], root: Path) -> bool:
    """``apt-get download`` the packages (no root needed) and unpack their files under ``root``."""
    if shutil.which("dpkg-deb") is None:
        return False
    with tempfile.TemporaryDirectory() as staging:
        print(f"+ (cd {staging} && apt-get download {' '.join(names)})", flush=True)
        if subprocess.run(["apt-get", "download", *names], cwd=staging, check=False).returncode != 0:
            return False
        root.mkdir(parents=True, exist_ok=True)
        return all(_run(["dpkg-deb", "-x", str(deb), str(root)]) for deb in sorted(Path(staging).glob("*.deb")))


def ensure(needs: tuple[str, ...], prefix: Path) -> int:
    """Install what ``needs`` lacks; 0 when everything is present afterwards, else 1 with the command to run."""
    lacking = missing(needs, prefix)
    if not lacking:
        return 0
    names = [package.name for package in lacking]
    print(f"system packages missing: {' '.join(names)}", flush=True)
    if shutil.which("apt-get") is not None:
        if os.geteuid() == 0:
            _apt_install(names, [])
        elif not _download_and_unpack(names, local_root(prefix)) and shutil.which("sudo") is not None:
            _apt_install(names, ["sudo", "-n"])
    still = missing(needs, prefix)
    if not still:
        return 0
    command = "sudo apt-get install -y " + " ".join(package.name for package in still)
    print(f"error: could not install {' '.join(p.name for p in still)}; run `{command}`, then again.", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m alpr.system_packages", description=__doc__.splitlines()[0])
    parser.add_argument(
        "needs", nargs="*", metavar="NEED", help=f"what to make present: {', '.join(NEEDS)} (default: all)"
    )
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix), help="the virtual environment")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when something is missing")
    args = parser.parse_args(argv)
    needs = tuple(args.needs) or NEEDS
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        parser.error(f"unknown need {', '.join(unknown)}: choose from {', '.join(NEEDS)}")
    if args.check:
        lacking = missing(needs, args.prefix)
        for package in lacking:
            print(f"missing: {package.name}")
        return 1 if lacking else 0
    return ensure(needs, args.prefix)


if __name__ == "__main__":
    sys.exit(main())
