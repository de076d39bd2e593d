"""Where the repository and the read-only shared data (published weights, real photos) live."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR_ENV = "ALPR_SHARED_DIR"


def repo_root() -> Path:
    """The repository checkout that holds this package."""
    return Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared data folder: ``$ALPR_SHARED_DIR`` when set, else ``<repo root>/../shared``."""
    configured = os.environ.get(SHARED_DIR_ENV)
    return Path(configured) if configured else repo_root().parent / "shared"


def default_weights(name: str) -> Path:
    """The committed default weights of ``name`` (``detector``, ``stn`` or ``lprnet``); docs/ACCURACY.md says how
    each was made."""
    return Path(__file__).resolve().parent / "weights" / f"{name}.pt"


def published_weights(name: str) -> Path:
    """The published Russian-plate checkpoint of ``name`` (``stn`` or ``lprnet``) in the shared folder."""
    return shared_dir() / "weights" / f"{name}.pth"
