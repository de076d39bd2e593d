"""Choose the served detector score thresholds on a validation set of scenes, never on the held-out set.

``python -m alpr.thresholds`` (``make thresholds``) runs the served views and detector once per validation scene
with a low score floor, then replays the crop step's merge for every pair of thresholds (whole view, tile) on a grid
and reports detector precision and recall at IoU 0.5 for each. The pair chosen is the one with the highest
min(precision, recall), the target being that both reach 0.95 (ties: the higher F1). The whole image alone
(``TILE_GRID=1``) is swept as well: its only view is the whole view of the tiled run. The outcome is written to
``build/thresholds/`` for ``alpr/spec.py`` to adopt; nothing is changed by the sweep itself.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alpr import paths, spec
from alpr.detector_graph import DetectorWithNMS
from alpr.evaluate import save_report
from alpr.geometry import DetectorViews, merged_plates
from alpr.metrics import DetectionTally
from alpr.models import load_detector
from alpr.synth.dataset import HELDOUT_SEED, MIXED_SIZES, iter_scenes

VALIDATION_SEED = 4242
VALIDATION_COUNT = 1000
SCORE_FLOOR = 0.1
GRID = tuple(round(t, 2) for t in np.arange(0.15, 0.96, 0.05))


@dataclass
class ViewDetections:
    """One scene's per-view detector outputs (at the score floor) and its true plate boxes."""

    num_dets: torch.Tensor
    det_boxes: torch.Tensor
    det_scores: torch.Tensor
    height: int
    width: int
    truth: np.ndarray


def detect_views(detector_weights: str | Path, count: int, tile_grid: int, seed: int) -> list[ViewDetections]:
    """The detector's answers on every view of validation scenes ``0 .. count - 1`` of ``seed``."""
    views = DetectorViews(tile_grid).eval()
    detector = DetectorWithNMS(load_detector(detector_weights).eval(), confidence=SCORE_FLOOR).eval()
    outputs = []
    with torch.no_grad():
        for scene in tqdm(iter_scenes(seed, count, MIXED_SIZES), total=count, desc="validation"):
            num_dets, det_boxes, det_scores = detector(views(torch.from_numpy(scene.image)))
            truth = np.array([p.box_xyxy for p in scene.plates], dtype=np.float64).reshape(-1, 4)
            outputs.append(ViewDetections(num_dets, det_boxes, det_scores, *scene.image.shape[:2], truth))
    return outputs


def precision_recall(
    detections: list[ViewDetections], tile_grid: int, thresholds: tuple[float, float]
) -> dict[str, float]:
    """Detector precision, recall and AP@0.5 after the crop step's merge at ``thresholds`` (whole view, tile)."""
    tally = DetectionTally()
    views = spec.detector_views(tile_grid)
    for d in detections:
        height, width = torch.tensor(d.height), torch.tensor(d.width)
        count, boxes, scores = merged_plates(
            d.num_dets[:views], d.det_boxes[:views], d.det_scores[:views], height, width, tile_grid, thresholds
        )
        tally.add(boxes[:count].numpy(), scores[:count].numpy(), d.truth)
    return tally.summary()


def _rank(row: dict) -> tuple[float, float]:
    precision, recall = row["precision"], row["recall"]
    return min(precision, recall), 2 * precision * recall / max(1e-9, precision + recall)


def sweep(detections: list[ViewDetections], tile_grid: int) -> dict:
    """Every threshold pair on ``GRID`` for ``tile_grid`` (one threshold when it is 1), best first."""
    pairs = itertools.product(GRID, GRID) if tile_grid > 1 else ((t, spec.TILE_CONFIDENCE) for t in GRID)
    rows = []
    for whole, tile in tqdm(list(pairs), desc=f"sweep, tile grid {tile_grid}", leave=False):
        rows.append({"whole_view": whole, "tile": tile, **precision_recall(detections, tile_grid, (whole, tile))})
    rows.sort(key=_rank, reverse=True)
    served = spec.view_thresholds(tile_grid)
    return {
        "tile_grid": tile_grid,
        "served": {"whole_view": served[0], "tile": served[1], **precision_recall(detections, tile_grid, served)},
        "best": rows[0],
        "top": rows[:10],
    }


def markdown(report: dict) -> str:
    """The served and the best thresholds of each tile grid, with the runners-up."""
    lines = [f"Validation scenes: {report['scenes']} (seed {report['seed']}), score floor {SCORE_FLOOR}", ""]
    for result in report["sweeps"]:
        lines += [
            f"Tile grid {result['tile_grid']}:",
            "",
            "| | whole view | tile | precision | recall | AP@0.5 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in [("served", result["served"]), *(("", row) for row in result["top"])]:
            tile = f"{row['tile']:.2f}" if result["tile_grid"] > 1 else "-"
            lines.append(
                f"| {name} | {row['whole_view']:.2f} | {tile} | {row['precision']:.3f} | {row['recall']:.3f} |"
                f" {row['map50']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector-weights", default=str(paths.default_weights("detector")))
    parser.add_argument("--scenes", type=int, default=VALIDATION_COUNT)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED, help="validation scenes; not the held-out seed")
    parser.add_argument("--tile-grid", type=int, default=spec.TILE_GRID)
    parser.add_argument("--out", default="build/thresholds", help="folder for report.json and report.md")
    args = parser.parse_args(argv)
    if args.seed == HELDOUT_SEED:
        parser.error("the held-out seed measures the thresholds; choosing them on it would flatter them")

    detections = detect_views(args.detector_weights, args.scenes, args.tile_grid, args.seed)
    grids = sorted({args.tile_grid, 1}, reverse=True)
    report = {
        "detector_weights": args.detector_weights,
        "scenes": args.scenes,
        "seed": args.seed,
        "sweeps": [sweep(detections, grid) for grid in grids],
    }
    save_report(Path(args.out), report, markdown(report))
    return report


if __name__ == "__main__":
    main()
