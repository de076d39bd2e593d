"""The code of the ensemble's Python steps, copied into the repository as ``<step>/1/model.py`` (``ctc_decoder``,
``image_decoder``) or into the server's backend folder (``onnxruntime_python``, the runner of every ONNX step on the
CPU target). They import ``triton_python_backend_utils``, which exists only inside Triton's Python stub: they are
files for the server, not modules to import here.
"""

from __future__ import annotations

from pathlib import Path

STEPS_DIR = Path(__file__).resolve().parent


def step_source(name: str) -> Path:
    """The source file of the Python step (or backend) ``name``."""
    path = STEPS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no Python step named {name!r} in {STEPS_DIR}")
    return path
