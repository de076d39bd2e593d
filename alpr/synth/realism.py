"""Realism check of the synthetic plates: how well the published recogniser, trained on real photos only, reads them.

Each plate patch is cropped with the serving geometry (``alpr.geometry.crop_plates``) from the tight box of its quad,
straightened by the STN and read by LPRNet with greedy CTC decoding. The closer the character error rate (CER) is to
the one on real plates, the closer the rendering is to real plates. Frontal plates measure the rendering; the training
patches add the full range of perspective, occlusion and camera effects.

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
from alpr.synth.scenes import PlateSample, make_plate_patch


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


def frontal_samples(rng: np.random.Generator, n: int) -> list[PlateSample]:
    """Plates seen square-on, 60 to 160 pixels wide, with the scenes' camera effects: the rendering on its own."""
    return [make_plate_patch(rng, float(rng.uniform(60, 160)), tilt=0.0) for _ in range(n)]


def report(name: str, samples: Sequence[PlateSample], lprnet: torch.nn.Module, stn: torch.nn.Module) -> None:
    """Print the CER on ``samples``, overall and on the private-car format the published weights know best."""
    predicted = read_plates(samples, lprnet, stn)
    truth = [sample.text for sample in samples]
    type1 = FORMATS_BY_NAME["type1"].pattern
    private = [i for i, text in enumerate(truth) if type1.fullmatch(text)]
    exact = sum(p == t for p, t in zip(predicted, truth, strict=True))
    print(
        f"{name}: CER {character_error_rate(predicted, truth):.3f} on {len(samples)} plates, "
        f"{character_error_rate([predicted[i] for i in private], [truth[i] for i in private]):.3f} on the "
        f"{len(private)} private-car (type 1) ones; {exact} read exactly"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="number of plates of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lprnet, stn = published_recogniser()
    report("frontal plates", frontal_samples(np.random.default_rng(args.seed), args.count), lprnet, stn)
    report("training patches", plate_samples(np.random.default_rng(args.seed), args.count), lprnet, stn)


if __name__ == "__main__":
    main()
