"""Check every exported graph against its PyTorch source and, for the geometry, the NumPy references.

    python export/verify.py --onnx-dir build/onnx [--detector-weights P] [--lprnet-weights P] [--stn-weights P]
                            [--max-plates K] [--random-init] [--timing]

Inputs are fresh random ones and a real photo (the shared ``real/car.jpg`` and its labelled plate where present, a
synthetic street frame otherwise). Prints one row per comparison: model, input, reference, max abs diff, tolerance,
PASS/FAIL, and exits non-zero when any fails. ``--timing`` adds the onnxruntime wall time of each graph on one CPU
thread for a 1920x1080 frame. The weight options must be those the graphs were exported with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable like ``python -m`` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import onnxruntime as ort
import torch

from alpr import spec
from alpr.crop import Crop
from alpr.detector_graph import DetectorWithNMS
from alpr.geometry import detections_for_boxes
from alpr.paths import shared_dir
from alpr.preprocess import Preprocess
from alpr.reference import crop_step_reference, preprocess_reference
from alpr.views import letterbox_views, views_tile_grid
from export.to_onnx import GRAPH_NAMES, Networks, networks_from_arguments, weight_arguments

# Tolerances, max abs difference. Letterbox pixels are uint8: one grey level allows float32 vs float64 rounding
# of a sample that falls on .5. Detector boxes are pixels of the 640 canvas (the network's float32 error, about
# 1e-5 relative, times coordinates up to 640); scores are probabilities. Crops are normalised pixels (1/128 per
# grey level): the graph and eager PyTorch run the same float32 operations; the float64 NumPy reference differs by
# the float32 rounding of sample positions (1e-4 pixel at 4K), times image gradients. Network outputs are
# float32 activations and logits.
LETTERBOX_TOLERANCE = 1.0
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4
CROP_TOLERANCE = 1e-5
CROP_REFERENCE_TOLERANCE = 1e-3
PLATE_BOX_TOLERANCE = 1e-3  # original-image pixels: float32 against float64 box mapping
NETWORK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    """One comparison of a graph's output with its reference."""

    model: str
    output: str
    input: str
    reference: str
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class Scene:
    """A BGR photo and x1, y1, x2, y2 boxes of its plates in original pixels."""

    name: str
    image: np.ndarray
    plate_boxes: np.ndarray


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session limited to ``threads`` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(actual: np.ndarray, expected: np.ndarray | torch.Tensor) -> float:
    """Largest absolute difference (inf when the shapes differ), computed in float64."""
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())


def synthetic_scene(seed: int = 0, height: int = 1080, width: int = 1920) -> Scene:
    """A street-like frame: a smooth background, clutter, and one white plate with dark characters."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(60, 190, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (height, width, 3)).astype(np.float32), (0, 0), 3)
    image = np.clip(gradient + noise, 0, 255).astype(np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))), colour, -1)
    x1, y1, x2, y2 = 800.0, 700.0, 1000.0, 744.0
    cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (235, 235, 235), -1)
    cv2.putText(image, "A123BC", (int(x1) + 8, int(y2) - 8), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 3)
    return Scene("synthetic 1920x1080", image, np.array([[x1, y1, x2, y2]], np.float32))


def real_scene() -> Scene:
    """The shared photo ``real/car.jpg`` with its readable plate when present, else ``synthetic_scene()``."""
    folder = shared_dir() / "real"
    image = cv2.imread(str(folder / "car.jpg")) if (folder / "car.jpg").is_file() else None
    if image is None:
        return synthetic_scene()
    labels = json.loads((folder / "labels.json").read_text())["car.jpg"]
    boxes = np.array([plate["box_xyxy"] for plate in labels["plates"]], np.float32)
    return Scene("car.jpg", image, boxes)


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise smoothed to photo-like gradients (sharp noise makes every sample position a worst case)."""
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 0) if min(height, width) >= 5 else noise


def detections_for(scene: Scene, max_plates: int, tile_grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector outputs for one image whose whole view detects the scene's plates (score 0.9)."""
    height, width = scene.image.shape[:2]
    return detections_for_boxes(scene.plate_boxes, height, width, max_plates, score=0.9, tile_grid=tile_grid)


CROP_INPUTS = spec.step_inputs("crop")


def crop_feed(image: np.ndarray, detections: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs of the crop graph: the original image and one image's detector outputs."""
    return dict(zip(CROP_INPUTS, (image, *detections), strict=True))


def verify(onnx_dir: Path, networks: Networks, seed: int = 0) -> list[Check]:
    """Compare the five graphs in ``onnx_dir`` with their sources; one ``Check`` per output and input."""
    rng = np.random.default_rng(seed)
    sessions = {name: session(Path(onnx_dir) / f"{name}.onnx") for name in GRAPH_NAMES}
    max_plates = exported_max_plates(sessions["detector"])
    grid = exported_tile_grid(sessions["preprocess"])
    scene = real_scene()
    checks: list[Check] = []

    def compare(model: str, label: str, reference: str, actual: Sequence, expected: Sequence, tol: Sequence) -> None:
        names = [output.name for output in sessions[model].get_outputs()]
        for name, a, e, t in zip(names, actual, expected, tol, strict=True):
            checks.append(Check(model, name, label, reference, max_abs_diff(a, e), t))

    # preprocess: random sizes (landscape, portrait with fractional padding, tiny) and the real photo.
    letterbox = Preprocess(grid)
    images = {
        "random 720x1280": random_image(rng, 720, 1280),
        "random 1001x357": random_image(rng, 1001, 357),
        "random 16x16": random_image(rng, 16, 16),
        scene.name: scene.image,
    }
    letterboxed = {}
    for label, image in images.items():
        (output,) = sessions["preprocess"].run(None, {spec.IMAGE_INPUT: image})
        letterboxed[label] = output
        with torch.no_grad():
            eager = letterbox(torch.from_numpy(image))
        compare("preprocess", label, "PyTorch", [output], [eager], [LETTERBOX_TOLERANCE])
        compare("preprocess", label, "NumPy", [output], [preprocess_reference(image, grid)], [LETTERBOX_TOLERANCE])
        # The views the cpu target draws with OpenCV instead of running this graph.
        compare("preprocess", label, "OpenCV", [output], [letterbox_views(image, grid)], [LETTERBOX_TOLERANCE])

    # detector: the views of the real photo and of a random frame in one batch, against eager PyTorch with the same NMS.
    detector = DetectorWithNMS(networks.detector, max_plates).eval()
    batch = np.concatenate([letterboxed[scene.name], letterboxed["random 720x1280"]])
    outputs = sessions["detector"].run(None, {spec.VIEWS: batch})
    with torch.no_grad():
        expected = detector(torch.from_numpy(batch))
    tolerances = [0.0, BOX_TOLERANCE, SCORE_TOLERANCE]
    compare("detector", f"{scene.name} + random, batch {len(batch)}", "PyTorch", outputs, expected, tolerances)

    # crop: the detector's own detections in the photo's views, its labelled plates, and no detection at all.
    views = len(letterboxed[scene.name])
    num_dets, det_boxes, det_scores = (output[:views] for output in outputs)
    # The photo shrunk to fit the canvas gets its whole view alone (V = 1, with that view's own threshold).
    height, width = scene.image.shape[:2]
    fit = spec.DETECTOR_SIZE / max(height, width)
    small = cv2.resize(scene.image, (round(width * fit), round(height * fit)), interpolation=cv2.INTER_AREA)
    (small_views,) = sessions["preprocess"].run(None, {spec.IMAGE_INPUT: small})
    cases = {
        f"{scene.name}, detector output": (scene.image, (num_dets, det_boxes, det_scores)),
        f"{scene.name}, labelled plates": (scene.image, detections_for(scene, max_plates, grid)),
        f"{scene.name}, no detection": (scene.image, (np.zeros_like(num_dets), det_boxes, det_scores)),
        f"{scene.name} shrunk to fit, 1 view": (small, sessions["detector"].run(None, {spec.VIEWS: small_views})),
    }
    cropper = Crop(grid)
    plate_crops = None
    for label, (image, detections) in cases.items():
        inputs = crop_feed(image, detections)
        crops = sessions["crop"].run(None, inputs)
        with torch.no_grad():
            eager = cropper(*(torch.from_numpy(value) for value in inputs.values()))
        compare("crop", label, "PyTorch", crops, eager, [CROP_TOLERANCE] * 3)
        reference = crop_step_reference(*inputs.values(), grid=grid)
        compare("crop", label, "NumPy", crops, reference, [CROP_REFERENCE_TOLERANCE, PLATE_BOX_TOLERANCE, 0.0])
        if "labelled" in label:
            plate_crops = crops[0]

    # stn and lprnet: random crops (batch 5) and the real plate crops.
    inputs = {
        "random normal, batch 5": rng.standard_normal((5, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH)).astype(np.float32),
        f"{scene.name} plate crops": plate_crops,
    }
    for label, crops in inputs.items():
        (rectified,) = sessions["stn"].run(None, {spec.CROPS: crops})
        (logits,) = sessions["lprnet"].run(None, {spec.RECTIFIED: rectified})
        with torch.no_grad():
            expected_rectified = networks.stn(torch.from_numpy(crops))
            expected_logits = networks.lprnet(torch.from_numpy(rectified))
        compare("stn", label, "PyTorch", [rectified], [expected_rectified], [NETWORK_TOLERANCE])
        compare("lprnet", label, "PyTorch", [logits], [expected_logits], [NETWORK_TOLERANCE])
    return checks


def exported_max_plates(detector: ort.InferenceSession) -> int:
    """K, the detections per image that the exported detector pads to (the second dim of ``det_boxes``)."""
    return next(output.shape[1] for output in detector.get_outputs() if output.name == spec.DET_BOXES)


def exported_tile_grid(preprocess: ort.InferenceSession) -> int:
    """G, the tiles per side the exported preprocess graph makes of a large frame."""
    return views_tile_grid(lambda image: preprocess.run(None, {spec.IMAGE_INPUT: image})[0])


def time_graphs(onnx_dir: Path, repeats: int = 10, threads: int = 1) -> dict[str, float]:
    """Median onnxruntime wall time in milliseconds of each graph for one 1920x1080 frame with one plate."""
    scene = synthetic_scene()
    sessions = {name: session(Path(onnx_dir) / f"{name}.onnx", threads) for name in GRAPH_NAMES}
    (images,) = sessions["preprocess"].run(None, {spec.IMAGE_INPUT: scene.image})
    detections = detections_for(
        scene, exported_max_plates(sessions["detector"]), exported_tile_grid(sessions["preprocess"])
    )
    crops, _, _ = sessions["crop"].run(None, crop_feed(scene.image, detections))
    (rectified,) = sessions["stn"].run(None, {spec.CROPS: crops})
    feeds = {
        "preprocess": {spec.IMAGE_INPUT: scene.image},
        "detector": {spec.VIEWS: images},
        "crop": crop_feed(scene.image, detections),
        "stn": {spec.CROPS: crops},
        "lprnet": {spec.RECTIFIED: rectified},
    }
    timings = {}
    for name, feed in feeds.items():
        sessions[name].run(None, feed)  # warm-up
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            sessions[name].run(None, feed)
            samples.append((time.perf_counter() - start) * 1000)
        timings[name] = statistics.median(samples)
    return timings


def print_table(checks: Sequence[Check]) -> None:
    """One line per check: model, output, input, reference, max abs diff, tolerance, PASS/FAIL."""
    header = f"{'model':<11}{'output':<13}{'input':<36}{'reference':<10}{'max abs diff':>13}{'tolerance':>11}  result"
    print(header)
    print("-" * len(header))
    for check in checks:
        print(
            f"{check.model:<11}{check.output:<13}{check.input:<36}{check.reference:<10}{check.max_abs_diff:>13.3g}"
            f"{check.tolerance:>11.3g}  {'PASS' if check.passed else 'FAIL'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx-dir", type=Path, required=True, help="folder holding <step>.onnx")
    parser.add_argument("--timing", action="store_true", help="also time each graph on one CPU thread (1920x1080)")
    weight_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        networks = networks_from_arguments(args)
    except FileNotFoundError as missing:
        parser.error(str(missing))
    checks = verify(args.onnx_dir, networks, args.seed)
    print_table(checks)
    if args.timing:
        print("\nonnxruntime, 1 CPU thread, one 1920x1080 frame with one plate (median ms):")
        for name, milliseconds in time_graphs(args.onnx_dir).items():
            print(f"  {name:<11}{milliseconds:8.2f}")
    failed = [check for check in checks if not check.passed]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
