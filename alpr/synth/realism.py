"""Realism check of the synthetic plates: how well the published recogniser, trained on real photos only, reads them.

Each plate patch is cropped with the serving geometry (``alpr.geometry.crop_plates``) from the tight box of its quad,
straightened by the STN and read by LPRNet with greedy CTC decoding. The closer the character error rate (CER) is to
the one on real plates, the closer the rendering is to real plates.

    python -m alpr.synth.realism [--count 200] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from alpr.ctc import greedy_decode
from alpr.geometry import crop_plates
from alpr.metrics import edit_distance
from alpr.models import load_lprnet, load_stn
from alpr.paths import shared_dir
from alpr.synth.dataset import plate_box, plate_samples
from alpr.synth.plates import FORMATS_BY_NAME
from alpr.synth.scenes import PlateSample


def read_plates(samples: Sequence[PlateSample], lprnet: torch.nn.Module, stn: torch.nn.Module) -> list[str]:
    """Texts the recogniser reads from each sample, cropped from the tight box of its corners."""
    crops = torch.cat([crop_plates(sample.image, np.array([plate_box(sample.corners)])) for sample in samples])
    with torch.no_grad():
        logits = lprnet(stn(crops))
    return greedy_decode(logits.numpy())


def character_error_rate(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Edit distance summed over all plates, divided by the number of true characters."""
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth, strict=True))
    return errors / max(1, sum(len(t) for t in truth))


def published_recogniser() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The published LPRNet and STN from the shared weights folder."""
    weights = shared_dir() / "weights"
    return load_lprnet(weights / "lprnet.pth"), load_stn(weights / "stn.pth")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="number of plate patches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lprnet, stn = published_recogniser()
    samples = plate_samples(np.random.default_rng(args.seed), args.count)
    predicted = read_plates(samples, lprnet, stn)
    truth = [sample.text for sample in samples]
    # The published weights know the private-car format best; the other formats are rarer on the road.
    type1 = FORMATS_BY_NAME["type1"].pattern
    private = [i for i, text in enumerate(truth) if type1.fullmatch(text)]
    print(f"CER on {len(samples)} synthetic plate patches: {character_error_rate(predicted, truth):.3f}")
    print(
        f"CER on the {len(private)} private-car (type 1) plates among them: "
        f"{character_error_rate([predicted[i] for i in private], [truth[i] for i in private]):.3f}"
    )
    exact = sum(p == t for p, t in zip(predicted, truth, strict=True))
    print(f"plates read exactly: {exact}/{len(samples)}")


if __name__ == "__main__":
    main()
