"""Check every TensorRT plan of a repository against onnxruntime running the exported graph on the same inputs.

Inputs are what each step sees in the pipeline: images (``--images`` files and synthetic street scenes) go through
the ONNX graphs in onnxruntime, preprocess -> detector -> crop -> stn, and each step's inputs are fed both to the
onnxruntime session of its graph and to its plan through Polygraphy's ``TrtRunner`` (``Comparator.run``). The
detector plan, built from the ``EfficientNMS_TRT`` variant, is compared with the ONNX detector, whose NMS is
ONNX ``NonMaxSuppression``: the check covers the plugin's semantics, not only the network's arithmetic.

Tolerances (``TOLERANCES``), by step and precision of the plan:

    preprocess  uint8 canvas: |diff| <= 1 everywhere and >= 99.9 % of values equal (always fp32)
    crop        crops, boxes, scores: atol 1e-4 (always fp32)
    detector    same count per image; each box within 0.5 / 1 / 2 px and its score within 1e-3 / 1e-2 / 5e-2
                (fp32 / fp16 / int8); a detection scoring within that score tolerance of the confidence
                threshold may appear on one side only
    stn         rectified crops: atol 1e-4 (fp32), 2e-2 (fp16; int8 builds the STN in fp16 too)
    lprnet      logits: atol 1e-3 rtol 1e-4 (fp32), atol 1e-2 rtol 1e-2 (fp16); the greedy path (argmax per
                step) agrees on >= 99 % of steps (fp32, fp16) or >= 97 % (int8, which has no elementwise bound)

    python -m engines.compare --repository build/repository-tensorrt --onnx-dir build/onnx --precision fp16
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from alpr import spec
from alpr.serving.repository import read_config
from engines.build import PLAN_PLATFORM, step_precision

PIPELINE = ("preprocess", "detector", "crop", "stn", "lprnet")


@dataclass(frozen=True)
class Tolerance:
    """How far a plan may stray from onnxruntime (see the module docstring)."""

    atol: float = 0.0
    rtol: float = 0.0
    box_px: float = 0.0
    score_atol: float = 0.0
    min_path_agreement: float = 0.0
    elementwise: bool = True


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("preprocess", "fp32"): Tolerance(atol=1.0),
    ("crop", "fp32"): Tolerance(atol=1e-4),
    ("detector", "fp32"): Tolerance(box_px=0.5, score_atol=1e-3),
    ("detector", "fp16"): Tolerance(box_px=1.0, score_atol=1e-2),
    ("detector", "int8"): Tolerance(box_px=2.0, score_atol=5e-2),
    ("stn", "fp32"): Tolerance(atol=1e-4),
    ("stn", "fp16"): Tolerance(atol=2e-2),
    ("lprnet", "fp32"): Tolerance(atol=1e-3, rtol=1e-4, min_path_agreement=0.99),
    ("lprnet", "fp16"): Tolerance(atol=1e-2, rtol=1e-2, min_path_agreement=0.99),
    ("lprnet", "int8"): Tolerance(min_path_agreement=0.97, elementwise=False),
}
PREPROCESS_MIN_EXACT = 0.999


# Comparisons: NumPy only, one list of failure messages each (empty when the plan passes).


def compare_close(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> list[str]:
    """Elementwise |candidate - reference| <= atol + rtol |reference|."""
    if reference.shape != candidate.shape:
        return [f"{name}: shape {candidate.shape} != {reference.shape}"]
    error = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    bound = tolerance.atol + tolerance.rtol * np.abs(reference.astype(np.float64))
    if np.all(error <= bound):
        return []
    return [f"{name}: max |diff| {error.max():.3g} exceeds atol {tolerance.atol:g} rtol {tolerance.rtol:g}"]


def compare_canvas(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> list[str]:
    """The letterboxed uint8 canvas: off by at most ``atol`` and almost everywhere equal."""
    failures = compare_close(spec.VIEWS, reference, candidate, tolerance)
    if not failures:
        exact = float(np.mean(reference == candidate))
        if exact < PREPROCESS_MIN_EXACT:
            failures.append(f"images: only {exact:.4%} of values equal (< {PREPROCESS_MIN_EXACT:.1%})")
    return failures


def image_detections(outputs: dict[str, np.ndarray], image: int) -> tuple[np.ndarray, np.ndarray]:
    """The valid boxes and scores of one image of a detector's padded outputs."""
    count = int(outputs[spec.NUM_DETS][image].reshape(-1)[0])
    return outputs[spec.DET_BOXES][image, :count].astype(np.float64), outputs[spec.DET_SCORES][image, :count]


def compare_detections(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], tolerance: Tolerance
) -> list[str]:
    """Per image: the same detections, each box within ``box_px`` and its score within ``score_atol``."""
    failures = []
    borderline = spec.DETECTOR_CONFIDENCE + tolerance.score_atol
    for image in range(reference[spec.NUM_DETS].shape[0]):
        ref_boxes, ref_scores = image_detections(reference, image)
        cand_boxes, cand_scores = image_detections(candidate, image)
        unmatched = list(range(len(cand_boxes)))
        for box, score in zip(ref_boxes, ref_scores, strict=True):
            distances = [np.abs(cand_boxes[j] - box).max() for j in unmatched]
            best = int(np.argmin(distances)) if distances else -1
            if best >= 0 and distances[best] <= tolerance.box_px:
                j = unmatched.pop(best)
                if abs(float(cand_scores[j]) - float(score)) > tolerance.score_atol:
                    failures.append(f"image {image}: score {cand_scores[j]:.4f} vs {score:.4f}")
            elif score > borderline:
                failures.append(f"image {image}: no box within {tolerance.box_px} px of {np.round(box, 1).tolist()}")
        failures += [
            f"image {image}: extra box {np.round(cand_boxes[j], 1).tolist()} scored {cand_scores[j]:.3f}"
            for j in unmatched
            if cand_scores[j] > borderline
        ]
    return failures


def compare_logits(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> list[str]:
    """LPRNet logits ``[M, classes, steps]``: elementwise bound (unless int8) and greedy-path agreement."""
    failures = compare_close(spec.LOGITS, reference, candidate, tolerance) if tolerance.elementwise else []
    if reference.shape == candidate.shape:
        agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
        if agreement < tolerance.min_path_agreement:
            failures.append(
                f"logits: greedy path agrees on {agreement:.2%} of steps (< {tolerance.min_path_agreement:.0%})"
            )
    return failures


def compare_step(
    model: str, precision: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]
) -> list[str]:
    """Failures of one step's plan outputs against onnxruntime's, with the tolerance of its precision."""
    tolerance = TOLERANCES[(model, precision)]
    if model == "preprocess":
        return compare_canvas(reference[spec.VIEWS], candidate[spec.VIEWS], tolerance)
    if model == "detector":
        return compare_detections(reference, candidate, tolerance)
    if model == "lprnet":
        return compare_logits(reference[spec.LOGITS], candidate[spec.LOGITS], tolerance)
    return [
        failure for name in reference for failure in compare_close(name, reference[name], candidate[name], tolerance)
    ]


# Inputs of every step, produced by the ONNX graphs in onnxruntime.


def chunks(items: Sequence[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """``items`` concatenated along the batch axis in groups of at most ``size`` rows."""
    rows = np.concatenate(list(items))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def step_inputs(onnx_dir: Path, images: Iterable[np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Feed dicts for each step, as the pipeline would produce them from ``images`` (BGR uint8)."""
    import onnxruntime

    sessions = {
        name: onnxruntime.InferenceSession(str(onnx_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        for name in ("preprocess", "detector", "crop", "stn")
    }

    def run(name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = sessions[name]
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))

    feeds: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    letterboxed, crops = [], []
    for image in images:
        feeds["preprocess"].append({spec.IMAGE_INPUT: image})
        canvas = run("preprocess", {spec.IMAGE_INPUT: image})[spec.VIEWS]
        letterboxed.append(canvas)
        detections = run("detector", {spec.VIEWS: canvas})
        crop_feed = {spec.IMAGE_INPUT: image, **detections}
        feeds["crop"].append(crop_feed)
        crops.append(run("crop", crop_feed)[spec.CROPS])
    feeds["detector"] = [{spec.VIEWS: batch} for batch in chunks(letterboxed, spec.DETECTOR_MAX_BATCH // 2)]
    for batch in chunks(crops, spec.RECOGNISER_MAX_BATCH):
        feeds["stn"].append({spec.CROPS: batch})
        feeds["lprnet"].append({spec.RECTIFIED: run("stn", {spec.CROPS: batch})[spec.RECTIFIED]})
    return feeds


def synthetic_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` synthetic street scenes with plates (``alpr.synth``), of the frame sizes the service expects."""
    from alpr.synth.scenes import make_scene

    rng = np.random.default_rng(seed)
    sizes = ((1080, 1920), (720, 1280), (480, 640), (1280, 720))
    return [make_scene(rng, *sizes[index % len(sizes)], num_plates=1 + index % 4).image for index in range(count)]


def read_images(paths: Iterable[Path]) -> list[np.ndarray]:
    """BGR uint8 images from files, as ``cv2.imread`` gives them (and the service receives them)."""
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read an image from {path}")
        images.append(image)
    return images


# Running the plans.


def compare_repository(
    repository: Path, onnx_dir: Path, precision: str, images: Sequence[np.ndarray]
) -> dict[str, list[str]]:
    """Failures per plan of ``repository`` (built with ``precision``) on the pipeline inputs of ``images``."""
    import tensorrt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator

    tensorrt.init_libnvinfer_plugins(None, "")
    feeds = step_inputs(onnx_dir, images)
    results = {}
    for model in PIPELINE:
        config_path = repository / model / "config.pbtxt"
        if not config_path.is_file() or read_config(config_path).platform != PLAN_PLATFORM:
            continue
        plan = (repository / model / spec.MODEL_VERSION / "model.plan").read_bytes()
        runners = [
            OnnxrtRunner(SessionFromOnnx(str(onnx_dir / f"{model}.onnx")), name="onnxruntime"),
            TrtRunner(EngineFromBytes(plan), name="tensorrt"),
        ]
        run_results = Comparator.run(runners, data_loader=feeds[model])
        (_, reference), (_, candidate) = run_results.items()
        model_precision = step_precision(model, precision)
        failures = []
        for index, (expected, actual) in enumerate(zip(reference, candidate, strict=True)):
            expected_arrays = {name: np.asarray(expected[name]) for name in expected}
            actual_arrays = {name: np.asarray(actual[name]) for name in expected}
            failures += [
                f"input {index}: {f}" for f in compare_step(model, model_precision, expected_arrays, actual_arrays)
            ]
        results[model] = failures
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="a tensorrt repository with its plans built")
    parser.add_argument("--onnx-dir", type=Path, required=True, help="the graphs the plans were built from")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="of the plans")
    parser.add_argument("--images", type=Path, nargs="*", default=(), help="photos to add to the synthetic scenes")
    parser.add_argument("--synthetic", type=int, default=16, help="synthetic scenes; default: %(default)s")
    args = parser.parse_args(argv)
    images = read_images(args.images) + (synthetic_images(args.synthetic) if args.synthetic else [])
    results = compare_repository(args.repository, args.onnx_dir, args.precision, images)
    for model, failures in results.items():
        print(f"{model:<11} {'PASS' if not failures else 'FAIL'}")
        for failure in failures[:20]:
            print(f"    {failure}")
    return 0 if results and all(not failures for failures in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
