"""Convert the published Russian-plate STN + LPRNet checkpoints into the project's default recogniser weights.

The checkpoints (MIT, trained by the EtokonE/License_Plate_Recognition project on real Russian plate crops and
redistributed by the one_task_multiple_infras project) are read from the shared folder, checked against their
published sha256, and written in the project's format (fp32, unchanged values) with their origin in the metadata.
``make recogniser-weights`` runs it; the licence notice ships beside the weights (``alpr/weights/LICENSE-recogniser``).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from alpr import paths
from alpr.models.checkpoints import LPRNET_ARCH, STN_ARCH, load_lprnet, load_stn, save_checkpoint

PUBLISHED_SHA256 = {
    "lprnet": "369ff38f6afa894628e6675f448fa0ff87d532fe1f099e6fc3b9a0fd2a8570b4",
    "stn": "4b42329b16c1c2a1c90444cb64dce04f6f3c5e32fa97fa07c4eaa9dec52a0f01",
}
SOURCE = (
    "published STN + LPRNet trained on real Russian plate crops by EtokonE/License_Plate_Recognition, "
    "redistributed under MIT by one_task_multiple_infras (nn/nn/weights/)"
)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert(name: str, source: Path, output: Path) -> None:
    """Write the published checkpoint ``name`` (``stn`` or ``lprnet``) from ``source`` to ``output``."""
    digest = sha256(source)
    if digest != PUBLISHED_SHA256[name]:
        raise ValueError(f"{source}: sha256 {digest} is not the published {name} checkpoint's")
    model = load_lprnet(source) if name == "lprnet" else load_stn(source)
    save_checkpoint(model, output, LPRNET_ARCH if name == "lprnet" else STN_ARCH, source=SOURCE, sha256=digest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=paths.default_weights("stn").parent)
    args = parser.parse_args(argv)
    for name in ("stn", "lprnet"):
        source = paths.published_weights(name)
        if not source.exists():
            raise SystemExit(f"{source} is missing: the published checkpoints are read from the shared folder")
        convert(name, source, args.out_dir / f"{name}.pt")
        print(f"{name}: {source} -> {args.out_dir / f'{name}.pt'}")


if __name__ == "__main__":
    main()
