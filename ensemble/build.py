"""Generate the Triton model repository for one serving target.

    python -m ensemble.build --target cpu --onnx-dir build/onnx --out model_repository [--max-plates 8] [--tile-grid 2]

``--onnx-dir`` holds the exported ``<step>.onnx`` graphs; without it only the configs and the decoder code are
written. ``--target auto`` picks tensorrt on a machine with a GPU and TensorRT, onnxruntime inside the official
tritonserver image, else cpu. For tensorrt the plans are then built by ``python -m engines.build``, which this command
runs when ``--onnx-dir`` is given.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from alpr import spec
from alpr.serving.repository import TARGETS, write_repository
from alpr.serving.server import auto_target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.build", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=(*TARGETS, "auto"), default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="repository folder to write")
    parser.add_argument("--onnx-dir", type=Path, help="the exported graphs (export/to_onnx.py --out-dir)")
    parser.add_argument("--max-plates", type=int, default=spec.MAX_PLATES, help="K: the export's --max-plates")
    parser.add_argument("--tile-grid", type=int, default=spec.TILE_GRID, help="G: the export's --tile-grid")
    args = parser.parse_args(argv)
    target = auto_target() if args.target == "auto" else args.target
    onnx_dir = None if target == "tensorrt" else args.onnx_dir
    try:
        out = write_repository(
            args.out, target, max_plates=args.max_plates, tile_grid=args.tile_grid, models_dir=onnx_dir
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"ensemble.build: {error}", file=sys.stderr)
        return 1
    print(f"{target} repository written to {out}")
    if target == "tensorrt" and args.onnx_dir is not None:
        command = [sys.executable, "-m", "engines.build", "--onnx-dir", str(args.onnx_dir), "--repository", str(out)]
        return subprocess.run(command, check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
