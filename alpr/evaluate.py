"""Accuracy of a set of weights: the fixed held-out synthetic set, and the real photos in ``../shared/real``.

``python -m alpr.evaluate`` (``make eval``) reports, for the in-process pipeline that the served ensemble reproduces:
detector precision, recall and AP@0.5 (at the detector graph's own confidence threshold and top-K), end-to-end
plate exact match and character error rate (a missed plate counts as read wrong, every character an error), the
recogniser alone on the true boxes (also on the same scenes without the camera effects, to show what blur, noise and
compression cost), and on the real photos what our weights and the published ones read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from alpr import paths, spec
from alpr.metrics import DetectionTally, box_iou, edit_distance
from alpr.pipeline import TorchPipeline
from alpr.synth.dataset import HELDOUT_COUNT, HELDOUT_SEED, HELDOUT_SIZES, iter_scenes
from alpr.synth.scenes import Scene

# Plate widths (source pixels) at which the report breaks recall and reading down: how far away a plate can be read.
WIDTH_BINS = ((0, 40), (40, 80), (80, 10_000))


def width_range_name(low: int, high: int) -> str:
    return f"{low}+ px" if high == WIDTH_BINS[-1][1] else f"{low}-{high} px"


def width_bin(box: tuple[float, float, float, float]) -> str:
    """The report's name of the width range a box falls in."""
    width = box[2] - box[0]
    return next(width_range_name(low, high) for low, high in WIDTH_BINS if low <= width < high)


class ReadingTally:
    """Exact-match rate and character error rate of plate texts."""

    def __init__(self) -> None:
        self.plates = self.found = self.exact = self.edits = self.characters = 0

    def add(self, read: str, truth: str, found: bool = True) -> None:
        self.plates += 1
        self.found += found
        self.exact += read == truth
        self.edits += edit_distance(read, truth)
        self.characters += len(truth)

    def summary(self) -> dict[str, float]:
        return {
            "recall": self.found / max(1, self.plates),
            "exact_match": self.exact / max(1, self.plates),
            "cer": self.edits / max(1, self.characters),
            "plates": self.plates,
        }


def _width_tallies() -> dict[str, ReadingTally]:
    return {width_range_name(low, high): ReadingTally() for low, high in WIDTH_BINS}


def _read_true_boxes(
    pipeline: TorchPipeline, scene: Scene, overall: ReadingTally, by_width: dict[str, ReadingTally]
) -> None:
    """Tally what the recogniser alone reads on the true boxes of ``scene``'s plates."""
    if not scene.plates:
        return
    texts, _ = pipeline.read_boxes(scene.image, _true_boxes(scene))
    for plate, text in zip(scene.plates, texts, strict=True):
        overall.add(text, plate.text)
        by_width[width_bin(plate.box_xyxy)].add(text, plate.text)


def _true_boxes(scene: Scene) -> np.ndarray:
    return np.array([plate.box_xyxy for plate in scene.plates], dtype=np.float64).reshape(-1, 4)


def _summaries(tallies: dict[str, ReadingTally]) -> dict[str, dict[str, float]]:
    return {name: tally.summary() for name, tally in tallies.items()}


def evaluate_heldout(pipeline: TorchPipeline, count: int) -> dict:
    """Detector, end-to-end and recogniser-only metrics on the first ``count`` held-out scenes."""
    detection = DetectionTally()
    end_to_end, recogniser, partly_covered = ReadingTally(), ReadingTally(), ReadingTally()
    by_width, recogniser_by_width = _width_tallies(), _width_tallies()
    empty_scenes = empty_scenes_clean = 0
    for scene in tqdm(iter_scenes(HELDOUT_SEED, count, HELDOUT_SIZES), total=count, desc="held-out"):
        readings = pipeline(scene.image)
        matched = detection.add(readings.boxes, readings.det_scores, _true_boxes(scene))
        for plate, prediction in zip(scene.plates, matched, strict=True):
            read = readings.texts[prediction] if prediction >= 0 else ""
            end_to_end.add(read, plate.text, prediction >= 0)
            by_width[width_bin(plate.box_xyxy)].add(read, plate.text, prediction >= 0)
            if plate.occluded:
                partly_covered.add(read, plate.text, prediction >= 0)
        _read_true_boxes(pipeline, scene, recogniser, recogniser_by_width)
        if not scene.plates:
            empty_scenes += 1
            empty_scenes_clean += len(readings) == 0
    return {
        "scenes": count,
        "seed": HELDOUT_SEED,
        "detector": detection.summary(),
        "end_to_end": end_to_end.summary(),
        "end_to_end_by_plate_width": _summaries(by_width),
        "end_to_end_partly_covered": partly_covered.summary(),
        "recogniser_on_true_boxes": recogniser.summary(),
        "recogniser_on_true_boxes_by_plate_width": _summaries(recogniser_by_width),
        "empty_scenes": {"scenes": empty_scenes, "answered_no_plate": empty_scenes_clean},
    }


def evaluate_without_camera(pipeline: TorchPipeline, count: int) -> dict:
    """The recogniser on the true boxes of the same held-out scenes without the camera effects.

    Lighting, blur, noise and JPEG compression are the last step of drawing a scene, so the plates, their sizes and
    the rest of the scene are unchanged: the difference to ``recogniser_on_true_boxes`` is what those effects cost.
    """
    recogniser, by_width = ReadingTally(), _width_tallies()
    for scene in tqdm(iter_scenes(HELDOUT_SEED, count, HELDOUT_SIZES, camera=False), total=count, desc="no camera"):
        _read_true_boxes(pipeline, scene, recogniser, by_width)
    return {"recogniser_on_true_boxes": recogniser.summary(), "by_plate_width": _summaries(by_width)}


def evaluate_real(pipeline: TorchPipeline, published: TorchPipeline | None, real_dir: Path) -> dict | None:
    """What our pipeline (and the published recogniser) make of the real photos with reference labels."""
    labels_path = real_dir / "labels.json"
    if not labels_path.exists():
        return None
    labels = json.loads(labels_path.read_text())
    report = {}
    for name, label in labels.items():
        image = cv2.imread(str(real_dir / name), cv2.IMREAD_COLOR)
        readings = pipeline(image)
        entry: dict = {
            "detections": [
                {"box": [round(v, 2) for v in box.tolist()], "det_score": round(float(s), 3), "text": t}
                for box, s, t in zip(readings.boxes, readings.det_scores, readings.texts, strict=True)
            ],
            "reference_plates": [],
        }
        for plate in label["plates"]:
            reference = np.array([plate["box_xyxy"]], dtype=np.float32)
            iou = box_iou(readings.boxes, reference)[:, 0] if len(readings) else np.zeros(0)
            best = int(np.argmax(iou)) if len(iou) else -1
            found = best >= 0 and iou[best] >= 0.5
            ours_on_reference, _ = pipeline.read_boxes(image, reference)
            plate_report = {
                "text": plate["text"],
                "found_by_detector": bool(found),
                "best_iou": round(float(iou[best]), 3) if best >= 0 else 0.0,
                "our_text_on_detected_box": readings.texts[best] if found else None,
                "our_text_on_reference_box": ours_on_reference[0],
            }
            if published is not None:
                plate_report["published_text_on_reference_box"] = published.read_boxes(image, reference)[0][0]
                if found:
                    plate_report["published_text_on_detected_box"] = published.read_boxes(
                        image, readings.boxes[best : best + 1]
                    )[0][0]
            entry["reference_plates"].append(plate_report)
        report[name] = entry
    return report


def markdown(report: dict) -> str:
    """A short human-readable summary of the report."""
    held = report["heldout"]
    det, e2e, rec = held["detector"], held["end_to_end"], held["recogniser_on_true_boxes"]
    lines = [
        f"Held-out synthetic set: {held['scenes']} scenes (seed {held['seed']}), {det['plates']} plates",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| detector precision (IoU 0.5) | {det['precision']:.3f} |",
        f"| detector recall (IoU 0.5) | {det['recall']:.3f} |",
        f"| detector AP@0.5 | {det['map50']:.3f} |",
        f"| end-to-end plate exact match | {e2e['exact_match']:.3f} |",
        f"| end-to-end character error rate | {e2e['cer']:.3f} |",
        f"| recogniser exact match on true boxes | {rec['exact_match']:.3f} |",
        f"| recogniser CER on true boxes | {rec['cer']:.3f} |",
        f"| empty scenes answered with no plate | {held['empty_scenes']['answered_no_plate']}"
        f" / {held['empty_scenes']['scenes']} |",
    ]
    covered = held.get("end_to_end_partly_covered")
    if covered:
        lines.append(
            f"| plates partly covered by an occluder | {covered['plates']}, read exactly end to end:"
            f" {covered['exact_match']:.3f} |"
        )
    lines += [
        "",
        "End to end by plate width (source pixels):",
        "",
        "| width | plates | recall | exact match | CER |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in held["end_to_end_by_plate_width"].items():
        lines.append(
            f"| {name} | {row['plates']} | {row['recall']:.3f} | {row['exact_match']:.3f} | {row['cer']:.3f} |"
        )
    clean = report.get("heldout_without_camera_effects")
    if clean:
        lines += [
            "",
            "Recogniser alone on the true boxes, by plate width: the held-out scenes as the camera saw them, and the"
            " same scenes without its lighting, blur, noise and JPEG compression:",
            "",
            "| width | plates | exact match | exact match without camera effects | CER | CER without |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        rows = [("all", held["recogniser_on_true_boxes"], clean["recogniser_on_true_boxes"])]
        rows += [
            (name, row, clean["by_plate_width"][name])
            for name, row in held["recogniser_on_true_boxes_by_plate_width"].items()
        ]
        for name, row, without in rows:
            lines.append(
                f"| {name} | {row['plates']} | {row['exact_match']:.3f} | {without['exact_match']:.3f} "
                f"| {row['cer']:.3f} | {without['cer']:.3f} |"
            )
    if report.get("real"):
        lines += ["", "Real photos:", ""]
        for name, entry in report["real"].items():
            lines.append(
                f"- {name}: {len(entry['detections'])} detection(s) {[d['text'] for d in entry['detections']]}"
            )
            for plate in entry["reference_plates"]:
                lines.append(f"  - reference {plate['text']}: " + ", ".join(f"{k}={v}" for k, v in plate.items()))
    return "\n".join(lines) + "\n"


def save_report(out: Path, report: dict, summary: str) -> None:
    """Write ``report.json`` and its human-readable ``report.md`` into ``out``, and print the summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(summary)
    print(summary)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("detector", "stn", "lprnet"):
        parser.add_argument(f"--{name}-weights", default=str(paths.default_weights(name)))
    parser.add_argument("--scenes", type=int, default=HELDOUT_COUNT, help="held-out scenes to use (all by default)")
    parser.add_argument("--out", default="build/eval", help="folder for report.json and report.md")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--tile-grid",
        type=int,
        default=spec.TILE_GRID,
        help="detector tiles per side besides the whole image (1: none)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pipeline = TorchPipeline.from_weights(
        args.detector_weights, args.stn_weights, args.lprnet_weights, tile_grid=args.tile_grid
    )
    published = None
    if paths.published_weights("lprnet").exists() and paths.published_weights("stn").exists():
        published = TorchPipeline.from_weights(
            args.detector_weights,
            paths.published_weights("stn"),
            paths.published_weights("lprnet"),
            tile_grid=args.tile_grid,
        )
    report = {
        "weights": {"detector": args.detector_weights, "stn": args.stn_weights, "lprnet": args.lprnet_weights},
        "tile_grid": args.tile_grid,
        "heldout": evaluate_heldout(pipeline, args.scenes),
        "heldout_without_camera_effects": evaluate_without_camera(pipeline, args.scenes),
        "real": evaluate_real(pipeline, published, paths.shared_dir() / "real"),
    }
    save_report(Path(args.out), report, markdown(report))
    return report


if __name__ == "__main__":
    main()
