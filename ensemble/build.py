"""Generate the Triton model repository for one serving target.

    python -m ensemble.build --target cpu --onnx-dir build/onnx --out model_repository [--max-plates 8]

``--onnx-dir`` holds the exported ``<step>.onnx`` graphs (``<step>.plan`` engines with ``--models-dir`` for the
tensorrt target); without it only the configs and the decoder code are written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alpr import spec
from alpr.repository import TARGETS, write_repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.build", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="repository folder to write")
    parser.add_argument(
        "--onnx-dir", "--models-dir", dest="models_dir", type=Path, help="exported graphs (or engines) to copy in"
    )
    parser.add_argument("--max-plates", type=int, default=spec.MAX_PLATES, help="K: the export's --max-plates")
    args = parser.parse_args(argv)
    try:
        out = write_repository(args.out, args.target, max_plates=args.max_plates, models_dir=args.models_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"ensemble.build: {error}", file=sys.stderr)
        return 1
    print(f"{args.target} repository written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
