"""Choose the served detector score thresholds on validation data, never on a set that reports them.

``python -m alpr.thresholds`` (``make thresholds``) runs the served views and detector once per validation image
with a low score floor, then replays the crop step's merge for each candidate threshold, scored on the validation
split of the real photos (``alpr.realdata``; a plate counts as found when a box's centre lies inside it or their IoU
is at least 0.3) and on synthetic validation scenes (IoU 0.5):

- every pair (whole view among tiles, tile) on a grid, ranked by the lowest of the four precisions and recalls
  (ties: the higher real F1). Both count: the real photos are close-ups of 400-600 px, where plates are large; the
  synthetic scenes bring frames up to 1920x1080 with distant plates;
- the whole view's threshold when it is alone, on the images that fit the canvas (``spec.image_views``), ranked by
  the real photos, which all fit it;
- with ``--tile-grid 1``, the whole image alone on every image.

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


def real_samples(split: str = "validation") -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """The real labelled photos of ``split`` with their plate boxes."""
    for photo in realdata.real_photos(split):
        yield realdata.read_photo(photo.path), photo.boxes


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


def _rank(row: dict) -> tuple[float, float]:
    """Both data sets must hold: the lowest of real precision and recall and synthetic precision and recall first,
    then the real F1."""
    precision, recall, synthetic = row["precision"], row["recall"], row["synthetic"]
    lowest = min(precision, recall, synthetic["precision"], synthetic["recall"])
    return lowest, 2 * precision * recall / max(1e-9, precision + recall)


def _rank_real(row: dict) -> tuple[float, float]:
    """The real photos alone: the lower of precision and recall, then F1."""
    precision, recall = row["precision"], row["recall"]
    return min(precision, recall), 2 * precision * recall / max(1e-9, precision + recall)


def _ranked(
    real: list[ViewDetections],
    synthetic: list[ViewDetections],
    tile_grid: int,
    candidates: list[tuple[float, float, float]],
    rank: Callable[[dict], tuple[float, float]] = _rank,
) -> dict:
    """``candidates`` (alone, whole view among tiles, tile) scored on ``real`` (the real-photo criterion) and
    ``synthetic`` (IoU 0.5): the first as served, the others best first by ``rank``."""
    rows = []
    for alone, whole, tile in tqdm(candidates, desc=f"sweep, tile grid {tile_grid}", leave=False):
        row: dict = {"alone": alone, "whole_view": whole, "tile": tile}
        row.update(precision_recall(real, tile_grid, (alone, whole, tile), realdata.found_tally()))
        row["synthetic"] = precision_recall(synthetic, tile_grid, (alone, whole, tile))
        rows.append(row)
    served_row, rows = rows[0], sorted(rows[1:], key=rank, reverse=True)
    return {"served": served_row, "best": rows[0], "top": rows[:10]}


def sweep(real: list[ViewDetections], synthetic: list[ViewDetections], tile_grid: int) -> dict:
    """The thresholds on ``GRID`` for ``tile_grid``, each with the others as served.

    With tiles: every pair (whole view among tiles, tile) on all the images (``pairs``), and the whole view's threshold
    when alone on the images that fit the canvas, the only ones it acts on (``alone``), ranked by the real photos
    alone: they all fit the canvas, while the synthetic scenes that do would pull the threshold down to find plates
    of 10-20 px that nothing reads. Without tiles: the whole view's one threshold on all the images (``alone``).
    """
    alone, whole, tile = spec.view_thresholds()
    alone_candidates = [(threshold, whole, tile) for threshold in (alone, *GRID)]
    if tile_grid == 1:
        return {"tile_grid": 1, "alone": _ranked(real, synthetic, 1, alone_candidates)}

    def fits(detections: list[ViewDetections]) -> list[ViewDetections]:
        return [d for d in detections if spec.image_views(d.height, d.width, tile_grid) == 1]

    pairs = [(alone, *pair) for pair in [(whole, tile), *itertools.product(GRID, GRID)]]
    return {
        "tile_grid": tile_grid,
        "pairs": _ranked(real, synthetic, tile_grid, pairs),
        "alone": _ranked(fits(real), fits(synthetic), tile_grid, alone_candidates, rank=_rank_real),
        "images_alone": {"real": len(fits(real)), "synthetic": len(fits(synthetic))},
    }


def markdown(report: dict) -> str:
    """The served and the best thresholds of each sweep, with the runners-up."""
    lines = [
        f"Real validation photos: {report['real_photos']} (a plate is found by a box whose centre lies inside it or"
        f" whose IoU reaches {realdata.FOUND_IOU}); synthetic validation scenes: {report['scenes']} (seed"
        f" {report['seed']}, IoU 0.5); score floor {SCORE_FLOOR}. An image gets tiles only when its long side exceeds"
        f" {spec.TILES_ABOVE_SIDE} px; otherwise its whole view is alone.",
        "",
    ]
    for result in report["sweeps"]:
        grid = result["tile_grid"]
        tables = [("pairs", "the pair (whole view among tiles, tile), on all the images")] if grid > 1 else []
        alone_images = result.get("images_alone")
        where = (
            f"the images that fit the canvas ({alone_images['real']} real, {alone_images['synthetic']} synthetic)"
            if alone_images
            else "all the images"
        )
        tables.append(("alone", f"the whole view's threshold when alone, on {where}"))
        for key, title in tables:
            lines += [
                f"Tile grid {grid}, {title}:",
                "",
                "| | alone | whole view among tiles | tile | real precision | real recall | false boxes per photo"
                " | synthetic precision | synthetic recall |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for name, row in [("served", result[key]["served"]), *(("", row) for row in result[key]["top"])]:
                synthetic = row["synthetic"]
                lines.append(
                    f"| {name} | {row['alone']:.2f} | {row['whole_view']:.2f} | {row['tile']:.2f} |"
                    f" {row['precision']:.3f} | {row['recall']:.3f} | {row['false_boxes_per_image']:.3f} |"
                    f" {synthetic['precision']:.3f} | {synthetic['recall']:.3f} |"
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

    real = detect_views(args.detector_weights, real_samples("validation"), args.tile_grid, "real validation")
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
