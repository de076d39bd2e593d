"""Choose the served detector score thresholds on validation data, never on a set that reports them.

``python -m alpr.thresholds`` (``make thresholds``) runs the served views and detector once per validation image
with a low score floor, then replays the crop step's merge for each candidate threshold. The thresholds are ranked
on the validation split of the real photos only (``alpr.realdata``; a plate counts as found when a box's centre lies
inside it or their IoU is at least 0.3), laid out as they are and at camera sizes (``realdata.LAYOUTS``). Synthetic
validation scenes (IoU 0.5) are scored beside, as a regression check, and rank nothing:

- every pair (whole view among tiles, tile) on a grid, ranked by the lowest precision or recall on the photos
  enlarged to 1280 px and on the 1920x1080 frames of four photos (ties: the higher mean F1): those are the images
  that get tiles, where the photos as they are never do;
- the whole view's threshold when it is alone, on the images that fit the canvas (``spec.image_views``), ranked by
  the photos as they are, which all fit it;
- with ``--tile-grid 1``, the whole image alone on every image, ranked by all three layouts.

The outcome is written to ``build/thresholds/`` for ``alpr/spec.py`` to adopt; nothing is changed by the sweep.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alpr import paths, realdata, spec
from alpr.detector_graph import DetectorWithNMS
from alpr.evaluate import save_report
from alpr.geometry import merged_plates
from alpr.metrics import DetectionTally
from alpr.models import load_detector
from alpr.synth.dataset import HELDOUT_SEED, MIXED_SIZES, iter_scenes
from alpr.views import letterbox_views

VALIDATION_SEED = 4242
VALIDATION_COUNT = 300
SCORE_FLOOR = 0.1
GRID = tuple(round(t, 2) for t in np.arange(0.15, 0.96, 0.05))
LAYOUT_NAMES = {"photos": "real photos", "1280": "real at 1280 px", "1080p": "real 1080p frames"}


@dataclass
class ViewDetections:
    """One scene's per-view detector outputs (at the score floor) and its true plate boxes."""

    num_dets: torch.Tensor
    det_boxes: torch.Tensor
    det_scores: torch.Tensor
    height: int
    width: int
    truth: np.ndarray


def detect_views(
    detector_weights: str | Path, samples: Iterable[tuple[np.ndarray, np.ndarray]], tile_grid: int, desc: str
) -> list[ViewDetections]:
    """The detector's answers on every view of each validation ``(image, true boxes)`` sample."""
    detector = DetectorWithNMS(load_detector(detector_weights).eval(), confidence=SCORE_FLOOR).eval()
    outputs = []
    with torch.no_grad():
        for image, truth in tqdm(samples, desc=desc):
            num_dets, det_boxes, det_scores = detector(torch.from_numpy(letterbox_views(image, tile_grid)))
            outputs.append(ViewDetections(num_dets, det_boxes, det_scores, image.shape[0], image.shape[1], truth))
    return outputs


def synthetic_samples(seed: int, count: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Validation scenes ``0 .. count - 1`` of ``seed`` with their plate boxes."""
    for scene in iter_scenes(seed, count, MIXED_SIZES):
        yield scene.image, np.array([p.box_xyxy for p in scene.plates], dtype=np.float64).reshape(-1, 4)


def precision_recall(
    detections: list[ViewDetections],
    tile_grid: int,
    thresholds: tuple[float, float, float],
    tally: DetectionTally | None = None,
) -> dict[str, float]:
    """Detector precision, recall and AP after the crop step's merge at ``thresholds`` (whole view alone, whole view
    among tiles, tile), counted by ``tally`` (default: IoU 0.5)."""
    tally = tally or DetectionTally()
    for d in detections:
        views = spec.image_views(d.height, d.width, tile_grid)
        height, width = torch.tensor(d.height), torch.tensor(d.width)
        count, boxes, scores = merged_plates(
            d.num_dets[:views], d.det_boxes[:views], d.det_scores[:views], height, width, tile_grid, thresholds
        )
        tally.add(boxes[:count].numpy(), scores[:count].numpy(), d.truth)
    return tally.summary()


def _rank_by(layouts: tuple[str, ...]) -> Callable[[dict], tuple[float, float]]:
    """Rank a row by the lowest real precision or recall over ``layouts``, then by their mean F1."""

    def rank(row: dict) -> tuple[float, float]:
        scores = [row["real"][layout] for layout in layouts]
        lowest = min(min(score["precision"], score["recall"]) for score in scores)
        f1 = [2 * s["precision"] * s["recall"] / max(1e-9, s["precision"] + s["recall"]) for s in scores]
        return lowest, sum(f1) / len(f1)

    return rank


def _ranked(
    real: dict[str, list[ViewDetections]],
    synthetic: list[ViewDetections],
    tile_grid: int,
    candidates: list[tuple[float, float, float]],
) -> dict:
    """``candidates`` (alone, whole view among tiles, tile) scored on each real layout of ``real`` (the real-photo
    criterion), which rank them, and on ``synthetic`` (IoU 0.5), which is reported beside: the first as served, the
    others best first."""
    rows = []
    for thresholds in tqdm(candidates, desc=f"sweep, tile grid {tile_grid}", leave=False):
        row: dict = dict(zip(("alone", "whole_view", "tile"), thresholds, strict=True))
        row["real"] = {
            layout: precision_recall(detections, tile_grid, thresholds, realdata.found_tally())
            for layout, detections in real.items()
        }
        row["synthetic"] = precision_recall(synthetic, tile_grid, thresholds)
        rows.append(row)
    served_row, rows = rows[0], sorted(rows[1:], key=_rank_by(tuple(real)), reverse=True)
    return {"ranked_by": list(real), "served": served_row, "best": rows[0], "top": rows[:10]}


def sweep(real: dict[str, list[ViewDetections]], synthetic: list[ViewDetections], tile_grid: int) -> dict:
    """The thresholds on ``GRID`` for ``tile_grid``, each with the others as served, ranked on real photos only.

    ``real`` holds the validation photos in each of ``realdata.LAYOUTS``. With tiles: every pair (whole view among
    tiles, tile), ranked by the camera-size layouts (``realdata.CAMERA_LAYOUTS``), whose images all get tiles
    (``pairs``); and the whole view's threshold when alone, on the images that fit the canvas, the only ones it acts
    on, ranked by the photos as they are, which all fit it (``alone``). Without tiles: the whole view's one threshold on
    all the images, ranked by every layout (``alone``). The synthetic scenes are reported beside, never ranked: the
    detector's scores on rendered plates are not those on real ones.
    """
    alone, whole, tile = spec.view_thresholds()
    alone_candidates = [(threshold, whole, tile) for threshold in (alone, *GRID)]
    if tile_grid == 1:
        return {"tile_grid": 1, "alone": _ranked(real, synthetic, 1, alone_candidates)}

    def fits(detections: list[ViewDetections]) -> list[ViewDetections]:
        return [d for d in detections if spec.image_views(d.height, d.width, tile_grid) == 1]

    pairs = [(alone, *pair) for pair in [(whole, tile), *itertools.product(GRID, GRID)]]
    camera = {layout: real[layout] for layout in realdata.CAMERA_LAYOUTS}
    photos = fits(real["photos"])
    return {
        "tile_grid": tile_grid,
        "pairs": _ranked(camera, synthetic, tile_grid, pairs),
        "alone": _ranked({"photos": photos}, fits(synthetic), tile_grid, alone_candidates),
        "images_alone": {"real": len(photos), "synthetic": len(fits(synthetic))},
    }


def markdown(report: dict) -> str:
    """The served and the best thresholds of each sweep, with the runners-up."""
    lines = [
        f"Real validation photos: {report['real_photos']} (a plate is found by a box whose centre lies inside it or"
        f" whose IoU reaches {realdata.FOUND_IOU}), as they are, each enlarged to {realdata.ENLARGED_SIDE} px, and"
        f" {realdata.FRAME_GRID**2} to a {realdata.FRAME_SIZE[1]}x{realdata.FRAME_SIZE[0]} frame; synthetic"
        f" validation scenes: {report['scenes']} (seed {report['seed']}, IoU 0.5, reported, never ranked); score floor"
        f" {SCORE_FLOOR}. An image gets tiles only when its long side exceeds {spec.TILES_ABOVE_SIDE} px; otherwise"
        " its whole view is alone.",
        "",
    ]
    for result in report["sweeps"]:
        grid = result["tile_grid"]
        tables = [("pairs", "the pair (whole view among tiles, tile)")] if grid > 1 else []
        alone_images = result.get("images_alone")
        where = (
            f"the images that fit the canvas ({alone_images['real']} real, {alone_images['synthetic']} synthetic)"
            if alone_images
            else "all the images"
        )
        tables.append(("alone", f"the whole view's threshold when alone, on {where}"))
        for key, title in tables:
            layouts = result[key]["ranked_by"]
            names = ", ".join(LAYOUT_NAMES[layout] for layout in layouts)
            header = "".join(
                f" {LAYOUT_NAMES[layout]}: precision | recall | false boxes per image |" for layout in layouts
            )
            lines += [
                f"Tile grid {grid}, {title}, ranked by the lowest precision or recall on {names}:",
                "",
                f"| | alone | whole view among tiles | tile |{header} synthetic precision | synthetic recall |",
                "| --- " * (6 + 3 * len(layouts)) + "|",
            ]
            for name, row in [("served", result[key]["served"]), *(("", row) for row in result[key]["top"])]:
                real = "".join(
                    f" {row['real'][layout]['precision']:.3f} | {row['real'][layout]['recall']:.3f} |"
                    f" {row['real'][layout]['false_boxes_per_image']:.3f} |"
                    for layout in layouts
                )
                lines.append(
                    f"| {name} | {row['alone']:.2f} | {row['whole_view']:.2f} | {row['tile']:.2f} |{real}"
                    f" {row['synthetic']['precision']:.3f} | {row['synthetic']['recall']:.3f} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector-weights", default=str(paths.default_weights("detector")))
    parser.add_argument("--scenes", type=int, default=VALIDATION_COUNT, help="synthetic validation scenes")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED, help="validation scenes; not the held-out seed")
    parser.add_argument("--tile-grid", type=int, default=spec.TILE_GRID)
    parser.add_argument("--out", default="build/thresholds", help="folder for report.json and report.md")
    args = parser.parse_args(argv)
    if args.seed == HELDOUT_SEED:
        parser.error("the held-out seed measures the thresholds; choosing them on it would flatter them")
    photos = realdata.real_photos("validation")
    if not photos:
        parser.error(f"no real validation photos under {realdata.realtrain_dir()}: thresholds are chosen on them")

    real = {
        layout: detect_views(
            args.detector_weights, realdata.samples("validation", layout), args.tile_grid, f"real validation, {layout}"
        )
        for layout in realdata.LAYOUTS
    }
    synthetic = detect_views(
        args.detector_weights, synthetic_samples(args.seed, args.scenes), args.tile_grid, "synthetic validation"
    )
    grids = sorted({args.tile_grid, 1}, reverse=True)
    report = {
        "detector_weights": args.detector_weights,
        "real_photos": len(photos),
        "scenes": args.scenes,
        "seed": args.seed,
        "sweeps": [sweep(real, synthetic, grid) for grid in grids],
    }
    save_report(Path(args.out), report, markdown(report))
    return report


if __name__ == "__main__":
    main()
