"""Accuracy of a set of weights: real photos first (the test split of ``../shared/realtrain`` and the reference
photos in ``../shared/real``), then the fixed held-out synthetic set.

``python -m alpr.evaluate`` (``make eval``) reports, for the in-process pipeline that the served ensemble reproduces:
detector precision, recall and AP@0.5 (at the detector graph's own confidence threshold and top-K), end-to-end
plate exact match and character error rate (a missed plate counts as read wrong, every character an error), the
recogniser alone on the true boxes (also on the same scenes without the camera effects, to show what blur, noise and
compression cost), and on the real photos what our weights and the published ones read. On the real test split
(plates of many countries, so detection only) a plate counts as found when a box's centre lies inside it or their IoU
reaches 0.3, as the service's users count; precision, recall and AP at IoU 0.5 are given too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from alpr import paths, realdata, spec
from alpr.geometry import plate_box_of_crop
from alpr.metrics import DetectionTally, box_iou, edit_distance
from alpr.pipeline import PlateReadings, TorchPipeline
from alpr.synth.dataset import HELDOUT_COUNT, HELDOUT_SEED, HELDOUT_SIZES, iter_scenes
from alpr.synth.scenes import PlateInstance, Scene

# Plate widths (source pixels) at which the report breaks recall and reading down: how far away a plate can be read.
WIDTH_BINS = ((0, 40), (40, 80), (80, 10_000))


def width_range_name(low: int, high: int) -> str:
    return f"{low}+ px" if high == WIDTH_BINS[-1][1] else f"{low}-{high} px"


def width_bin(box: tuple[float, float, float, float]) -> str:
    """The report's name of the width range a box falls in."""
    width = box[2] - box[0]
    return next(width_range_name(low, high) for low, high in WIDTH_BINS if low <= width < high)


# Groups of true plates that the report breaks reading down by. A legible plate is at least LEGIBLE_MIN_WIDTH wide
# and not partly covered: narrower plates stay unreadable even without the camera effects (see the report).
ALL_PLATES = "all plates"
LEGIBLE_PLATES = "legible plates"
PARTLY_COVERED_PLATES = "partly covered plates"
LEGIBLE_MIN_WIDTH = 40
PLATE_GROUPS = (ALL_PLATES, *(width_range_name(low, high) for low, high in WIDTH_BINS), LEGIBLE_PLATES,
                PARTLY_COVERED_PLATES)  # fmt: skip


def plate_groups(plate: PlateInstance) -> list[str]:
    """The groups a true plate counts in: all plates, its width range, and legible or partly covered (or neither)."""
    groups = [ALL_PLATES, width_bin(plate.box_xyxy)]
    if plate.occluded:
        groups.append(PARTLY_COVERED_PLATES)
    elif plate.box_xyxy[2] - plate.box_xyxy[0] >= LEGIBLE_MIN_WIDTH:
        groups.append(LEGIBLE_PLATES)
    return groups


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


# Text-score floors at which the report counts what a client that drops less confident answers keeps.
TEXT_SCORE_FLOORS = (0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.9)


class AnswerTally:
    """The plates the service answers, each with its text score and whether it is a true plate read exactly."""

    def __init__(self) -> None:
        self.text_scores: list[float] = []
        self.correct: list[bool] = []
        self.plates = 0

    def add(self, readings: PlateReadings, matched: np.ndarray, scene: Scene) -> None:
        """Count one image: ``matched`` is the answer index of each true plate (-1 when missed)."""
        correct = np.zeros(len(readings), dtype=bool)
        for plate, answer in zip(scene.plates, matched, strict=True):
            if answer >= 0:
                correct[answer] = readings.texts[answer] == plate.text
        self.text_scores.extend(readings.text_scores.tolist())
        self.correct.extend(correct.tolist())
        self.plates += len(scene.plates)

    def at_floors(self, floors: tuple[float, ...] = TEXT_SCORE_FLOORS) -> list[dict[str, float]]:
        """For each floor: answers kept (text score at least the floor), the share of them that are a true plate read
        exactly, and the share of all true plates so read."""
        scores, correct = np.array(self.text_scores), np.array(self.correct, dtype=bool)
        rows = []
        for floor in floors:
            kept = scores >= floor
            right = int(np.sum(correct & kept))
            rows.append(
                {
                    "min_text_score": floor,
                    "answers": int(kept.sum()),
                    "read_exactly": right,
                    "answers_read_exactly": right / max(1, int(kept.sum())),
                    "plates_read_exactly": right / max(1, self.plates),
                }
            )
        return rows


class GroupedReadings:
    """A ``ReadingTally`` for each of the ``PLATE_GROUPS``."""

    def __init__(self) -> None:
        self.tallies = {group: ReadingTally() for group in PLATE_GROUPS}

    def add(self, plate: PlateInstance, read: str, found: bool = True) -> None:
        for group in plate_groups(plate):
            self.tallies[group].add(read, plate.text, found)

    def summary(self) -> dict[str, dict[str, float]]:
        return {group: tally.summary() for group, tally in self.tallies.items()}


def _read_true_boxes(pipeline: TorchPipeline, scene: Scene, tally: GroupedReadings) -> None:
    """Tally what the recogniser alone reads on the true boxes of ``scene``'s plates."""
    if not scene.plates:
        return
    texts, _ = pipeline.read_boxes(scene.image, _true_boxes(scene))
    for plate, text in zip(scene.plates, texts, strict=True):
        tally.add(plate, text)


def _true_boxes(scene: Scene) -> np.ndarray:
    return np.array([plate.box_xyxy for plate in scene.plates], dtype=np.float64).reshape(-1, 4)


def evaluate_heldout(pipeline: TorchPipeline, count: int) -> dict:
    """Detector, end-to-end and recogniser-only metrics on the first ``count`` held-out scenes."""
    detection = DetectionTally()
    end_to_end, recogniser = GroupedReadings(), GroupedReadings()
    answers = AnswerTally()
    empty_scenes = empty_scenes_clean = 0
    for scene in tqdm(iter_scenes(HELDOUT_SEED, count, HELDOUT_SIZES), total=count, desc="held-out"):
        readings = pipeline(scene.image)
        matched = detection.add(readings.boxes, readings.det_scores, _true_boxes(scene))
        answers.add(readings, matched, scene)
        for plate, prediction in zip(scene.plates, matched, strict=True):
            end_to_end.add(plate, readings.texts[prediction] if prediction >= 0 else "", prediction >= 0)
        _read_true_boxes(pipeline, scene, recogniser)
        if not scene.plates:
            empty_scenes += 1
            empty_scenes_clean += len(readings) == 0
    return {
        "scenes": count,
        "seed": HELDOUT_SEED,
        "detector": detection.summary(),
        "end_to_end": end_to_end.summary(),
        "recogniser_on_true_boxes": recogniser.summary(),
        "answers_by_min_text_score": answers.at_floors(),
        "empty_scenes": {"scenes": empty_scenes, "answered_no_plate": empty_scenes_clean},
    }


def evaluate_without_camera(pipeline: TorchPipeline, count: int) -> dict:
    """The recogniser on the true boxes of the same held-out scenes without the camera effects.

    Lighting, blur, noise and JPEG compression are the last step of drawing a scene, so the plates, their sizes and
    the rest of the scene are unchanged: the difference to ``recogniser_on_true_boxes`` is what those effects cost.
    """
    recogniser = GroupedReadings()
    for scene in tqdm(iter_scenes(HELDOUT_SEED, count, HELDOUT_SIZES, camera=False), total=count, desc="no camera"):
        _read_true_boxes(pipeline, scene, recogniser)
    return {"recogniser_on_true_boxes": recogniser.summary()}


def evaluate_real_split(pipeline: TorchPipeline, split: str = "test", layout: str = "photos") -> dict | None:
    """The detector, as served, on the real labelled photos of ``split`` laid out as ``layout``
    (``realdata.LAYOUTS``): found plates and false boxes per image (centre inside or IoU 0.3), and precision, recall
    and AP at IoU 0.5."""
    photos = realdata.real_photos(split)
    if not photos:
        return None
    found, strict = realdata.found_tally(), DetectionTally()
    images = 0
    for image, boxes in tqdm(realdata.samples(split, layout), desc=f"real {split}, {layout}"):
        readings = pipeline(image)
        images += 1
        for tally in (found, strict):
            tally.add(readings.boxes, readings.det_scores, boxes)
    return {
        "split": split,
        "layout": layout,
        "photos": len(photos),
        "images": images,
        "found": found.summary(),
        "iou50": strict.summary(),
    }


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
    crop_labels = real_dir / "crops" / "labels.json"
    if crop_labels.exists():
        report["crops"] = {}
        for name, text in json.loads(crop_labels.read_text()).items():
            crop = cv2.imread(str(real_dir / "crops" / name), cv2.IMREAD_COLOR)
            box = plate_box_of_crop(*crop.shape[:2])
            report["crops"][name] = {"text": text, "our_text": pipeline.read_boxes(crop, box)[0][0]}
    return report


def markdown(report: dict) -> str:
    """A short human-readable summary of the report."""
    held = report["heldout"]
    det = held["detector"]
    e2e, rec = held["end_to_end"][ALL_PLATES], held["recogniser_on_true_boxes"][ALL_PLATES]
    lines = []
    real_split = report.get("real_test_split")
    if real_split:
        found, strict = real_split["found"], real_split["iou50"]
        lines += [
            f"Real photos, test split of the labelled real photos: {real_split['photos']} photos, {found['plates']}"
            " plates (many countries)",
            "",
            "| metric | value |",
            "| --- | --- |",
            f"| plates found (centre inside or IoU 0.3) | {found['recall']:.3f} |",
            f"| false boxes per photo | {found['false_boxes_per_image']:.3f} |",
            f"| detector precision (IoU 0.5) | {strict['precision']:.3f} |",
            f"| detector recall (IoU 0.5) | {strict['recall']:.3f} |",
            f"| detector AP@0.5 | {strict['map50']:.3f} |",
            "",
        ]
    camera_sizes = [entry for entry in report.get("real_test_camera_sizes") or [] if entry]
    if camera_sizes:
        lines += [
            "The same photos at camera sizes, where tiles come in: each enlarged to"
            f" {realdata.ENLARGED_SIDE} px, and {realdata.FRAME_GRID**2} to a"
            f" {realdata.FRAME_SIZE[1]}x{realdata.FRAME_SIZE[0]} frame",
            "",
            "| layout | images | plates found | false boxes per image | precision (IoU 0.5) | recall (IoU 0.5)"
            " | AP@0.5 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for entry in camera_sizes:
            found, strict = entry["found"], entry["iou50"]
            lines.append(
                f"| {entry['layout']} | {entry['images']} | {found['recall']:.3f} |"
                f" {found['false_boxes_per_image']:.3f} | {strict['precision']:.3f} | {strict['recall']:.3f} |"
                f" {strict['map50']:.3f} |"
            )
        lines.append("")
    lines += [
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
    lines += [
        "",
        f"End to end by plate group (widths in source pixels; legible: at least {LEGIBLE_MIN_WIDTH} px wide and not"
        " partly covered):",
        "",
        "| plates | count | recall | exact match | CER |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in held["end_to_end"].items():
        lines.append(
            f"| {name} | {row['plates']} | {row['recall']:.3f} | {row['exact_match']:.3f} | {row['cer']:.3f} |"
        )
    lines += [
        "",
        "Answers a client keeps when it drops those with a lower text score:",
        "",
        "| min text score | answers | of them, true plates read exactly | of all plates, read exactly |",
        "| --- | --- | --- | --- |",
    ]
    for row in held["answers_by_min_text_score"]:
        lines.append(
            f"| {row['min_text_score']:g} | {row['answers']} | {row['answers_read_exactly']:.3f} "
            f"| {row['plates_read_exactly']:.3f} |"
        )
    clean = report["heldout_without_camera_effects"]
    lines += [
        "",
        "Recogniser alone on the true boxes: the held-out scenes as the camera saw them, and the same scenes"
        " without its lighting, blur, noise and JPEG compression:",
        "",
        "| plates | count | exact match | exact match without camera effects | CER | CER without |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in held["recogniser_on_true_boxes"].items():
        without = clean["recogniser_on_true_boxes"][name]
        lines.append(
            f"| {name} | {row['plates']} | {row['exact_match']:.3f} | {without['exact_match']:.3f} "
            f"| {row['cer']:.3f} | {without['cer']:.3f} |"
        )
    if report.get("real"):
        lines += ["", "Real photos:", ""]
        for name, entry in report["real"].items():
            if name == "crops":
                reads = [
                    f"{c['our_text']} ({'right' if c['our_text'] == c['text'] else c['text']})" for c in entry.values()
                ]
                lines.append(f"- plate crops (each crop read whole): {', '.join(reads)}")
                continue
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
        "real_test_split": evaluate_real_split(pipeline),
        "real_test_camera_sizes": [evaluate_real_split(pipeline, layout=layout) for layout in realdata.CAMERA_LAYOUTS],
        "heldout": evaluate_heldout(pipeline, args.scenes),
        "heldout_without_camera_effects": evaluate_without_camera(pipeline, args.scenes),
        "real": evaluate_real(pipeline, published, paths.shared_dir() / "real"),
    }
    save_report(Path(args.out), report, markdown(report))
    return report


if __name__ == "__main__":
    main()
