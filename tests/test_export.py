"""The exported ONNX graphs, run by onnxruntime, against PyTorch and NumPy references.

The graphs are exported once per session by the command-line script, from the seeded untrained networks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from alpr import spec
from alpr.crop import Crop
from alpr.detector_graph import PRE_NMS_TOP_K, DetectorWithNMS, NonMaxSuppression, non_max_suppression
from alpr.paths import repo_root, shared_dir
from alpr.preprocess import Preprocess
from alpr.reference import crop_step_reference, preprocess_reference
from export.to_onnx import GRAPH_NAMES, OPSET, Graph, export_graph, load_networks, served_graphs
from export.verify import (
    BOX_TOLERANCE,
    CROP_REFERENCE_TOLERANCE,
    CROP_TOLERANCE,
    NETWORK_TOLERANCE,
    SCORE_TOLERANCE,
    crop_feed,
    detections_for,
    random_image,
    real_scene,
    session,
    verify,
)

K = spec.MAX_PLATES


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("onnx")
    script = repo_root() / "export" / "to_onnx.py"
    subprocess.run([sys.executable, str(script), "--out-dir", str(out_dir), "--random-init"], check=True)
    return out_dir


@pytest.fixture(scope="session")
def networks():
    return load_networks(random_init=True)


@pytest.fixture(scope="session")
def sessions(onnx_dir: Path) -> dict:
    return {name: session(onnx_dir / f"{name}.onnx") for name in GRAPH_NAMES}


def assert_close(name: str, actual: np.ndarray, expected: np.ndarray | torch.Tensor, tolerance: float) -> None:
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) if actual.size else 0.0
    assert diff <= tolerance, f"{name}: max abs diff {diff:.3g} > tolerance {tolerance:g}"


def test_files_are_valid_opset_17_with_the_contract_names(onnx_dir: Path) -> None:
    expected = {
        "preprocess": (["image"], ["images"]),
        "detector": (["images"], ["num_dets", "det_boxes", "det_scores"]),
        "crop": (["image", "num_dets", "det_boxes", "det_scores"], ["crops", "plate_boxes", "plate_scores"]),
        "stn": (["crops"], ["rectified"]),
        "lprnet": (["rectified"], ["logits"]),
    }
    for name, (inputs, outputs) in expected.items():
        model = onnx.load(str(onnx_dir / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert [opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")] == [OPSET]
        assert [value.name for value in model.graph.input] == inputs
        assert [value.name for value in model.graph.output] == outputs


def test_batching_graphs_have_a_dynamic_first_axis_and_fixed_item_shapes(onnx_dir: Path) -> None:
    def dims(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    crop = (3, spec.CROP_HEIGHT, spec.CROP_WIDTH)
    expected = {
        "detector": [[3, 640, 640], [1], [K, 4], [K]],
        "stn": [list(crop), list(crop)],
        "lprnet": [list(crop), [23, spec.LPRNET_STEPS]],
    }
    for name, shapes in expected.items():
        model = onnx.load(str(onnx_dir / f"{name}.onnx"))
        values = [*model.graph.input, *model.graph.output]
        assert all(isinstance(dims(value)[0], str) for value in values), f"{name}: batch axis must be dynamic"
        assert [dims(value)[1:] for value in values] == shapes


@pytest.mark.parametrize(
    ("height", "width"),
    [(1080, 1920), (1001, 357), (16, 16), (2160, 4096)],
    ids=["landscape", "portrait", "tiny", "4k"],
)
def test_preprocess_graph_matches_pytorch_and_numpy(sessions: dict, height: int, width: int) -> None:
    image = random_image(np.random.default_rng(height + width), height, width)
    (images,) = sessions["preprocess"].run(None, {"image": image})
    with torch.no_grad():
        eager = Preprocess()(torch.from_numpy(image))
    assert images.dtype == np.uint8
    assert_close("images vs PyTorch (uint8 grey levels)", images, eager, 0)
    assert_close("images vs NumPy (uint8 grey levels)", images, preprocess_reference(image), 1)


def letterboxed_batch(sessions: dict, count: int, seed: int) -> np.ndarray:
    """The whole-image views of ``count`` street scenes with plates, one canvas each, so that the detector (trained
    or built to detect) has boxes to suppress."""
    from alpr.synth.scenes import make_scene

    rng = np.random.default_rng(seed)
    sizes = [(1080, 1920), (480, 640), (1001, 357), (720, 1280), (640, 640)]
    images = [make_scene(rng, *sizes[i % 5], num_plates=2).image for i in range(count)]
    images = [sessions["preprocess"].run(None, {"image": image})[0][:1] for image in images]
    return np.concatenate(images)


@pytest.mark.parametrize("batch", [1, 5])
def test_detector_graph_matches_pytorch(sessions: dict, networks, batch: int) -> None:
    images = letterboxed_batch(sessions, batch, seed=batch)
    num_dets, det_boxes, det_scores = sessions["detector"].run(None, {"images": images})
    with torch.no_grad():
        expected = DetectorWithNMS(networks.detector).eval()(torch.from_numpy(images))
    assert num_dets.dtype == np.int32 and num_dets.shape == (batch, 1)
    assert_close("num_dets", num_dets, expected[0], 0)
    assert_close("det_boxes (canvas px)", det_boxes, expected[1], BOX_TOLERANCE)
    assert_close("det_scores", det_scores, expected[2], SCORE_TOLERANCE)
    assert num_dets.sum() > 0, "the batch has detections, so NMS and top-K padding are exercised"


def test_detector_graph_is_batch_independent(sessions: dict) -> None:
    images = letterboxed_batch(sessions, 5, seed=11)
    batched = sessions["detector"].run(None, {"images": images})
    for index in range(len(images)):
        alone = sessions["detector"].run(None, {"images": images[index : index + 1]})
        for name, together, single in zip(("num_dets", "det_boxes", "det_scores"), batched, alone, strict=True):
            assert_close(f"image {index} {name}, alone vs in a batch of 5", single[0], together[index], 1e-4)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, limit: int, iou_threshold: float, threshold: float) -> list:
    """Greedy NMS in float64 NumPy: indices kept, best first."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > threshold]
    kept: list[int] = []
    for i in order:
        if len(kept) == limit:
            break
        x1 = np.maximum(boxes[i, 0], boxes[kept, 0])
        y1 = np.maximum(boxes[i, 1], boxes[kept, 1])
        x2 = np.minimum(boxes[i, 2], boxes[kept, 2])
        y2 = np.minimum(boxes[i, 3], boxes[kept, 3])
        intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        iou = intersection / (area[i] + area[kept] - intersection)
        if not (iou > iou_threshold).any():
            kept.append(int(i))
    return kept


def clustered_boxes(rng: np.random.Generator, batch: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around a few centres, so that suppression has overlaps to resolve, and distinct scores."""
    centres = rng.uniform(50, 590, (batch, 6, 2))[:, rng.integers(0, 6, count)]
    sizes = rng.uniform(10, 80, (batch, count, 2))
    centres = centres + rng.normal(0, 8, centres.shape)
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    return boxes, rng.uniform(0, 1, (batch, count)).astype(np.float32)


class SuppressionGraph(nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return NonMaxSuppression.apply(boxes, scores.unsqueeze(1), 20, spec.DETECTOR_IOU, spec.DETECTOR_CONFIDENCE)


def test_nms_eager_and_onnx_match_a_numpy_reference(tmp_path: Path) -> None:
    boxes, scores = clustered_boxes(np.random.default_rng(5), batch=3, count=300)
    path = tmp_path / "nms.onnx"
    axes = {"boxes": {0: "batch", 1: "boxes"}, "scores": {0: "batch", 1: "boxes"}, "selected": {0: "selected"}}
    example = (torch.from_numpy(boxes), torch.from_numpy(scores))
    export_graph(Graph("nms", SuppressionGraph(), ("boxes", "scores"), ("selected",), example, axes), path)
    (selected_onnx,) = session(path).run(None, {"boxes": boxes, "scores": scores})
    selected_eager = non_max_suppression(
        torch.from_numpy(boxes), torch.from_numpy(scores).unsqueeze(1), 20, spec.DETECTOR_IOU, spec.DETECTOR_CONFIDENCE
    ).numpy()
    for image in range(3):
        expected = reference_nms(boxes[image], scores[image], 20, spec.DETECTOR_IOU, spec.DETECTOR_CONFIDENCE)
        assert 5 < len(expected) <= 20, "the clusters must leave some boxes and suppress others"
        for name, selected in (("onnxruntime", selected_onnx), ("eager", selected_eager)):
            rows = selected[selected[:, 0] == image]
            assert (rows[:, 1] == 0).all()
            assert rows[:, 2].tolist() == expected, f"{name} NMS differs from the NumPy reference on image {image}"


def test_detector_post_processing_matches_a_numpy_reference(sessions: dict, networks) -> None:
    """Decode, pre-NMS top-k, NMS and padding, recomputed in NumPy from the raw YOLOv5 predictions."""
    images = letterboxed_batch(sessions, 2, seed=21)
    num_dets, det_boxes, det_scores = sessions["detector"].run(None, {"images": images})
    with torch.no_grad():
        predictions = networks.detector(torch.from_numpy(images).float() / 255).numpy().astype(np.float64)
    for image, prediction in enumerate(predictions):
        boxes = np.concatenate(
            [prediction[:, :2] - prediction[:, 2:4] / 2, prediction[:, :2] + prediction[:, 2:4] / 2], 1
        )
        scores = prediction[:, 4] * prediction[:, 5:].max(1)
        top = np.argsort(-scores, kind="stable")[:PRE_NMS_TOP_K]
        kept = top[reference_nms(boxes[top], scores[top], K, spec.DETECTOR_IOU, spec.DETECTOR_CONFIDENCE)]
        expected_boxes = np.zeros((K, 4))
        expected_scores = np.zeros(K)
        expected_boxes[: len(kept)] = boxes[kept]
        expected_scores[: len(kept)] = scores[kept]
        assert num_dets[image].tolist() == [len(kept)]
        assert_close(f"image {image} det_boxes", det_boxes[image], expected_boxes, BOX_TOLERANCE)
        assert_close(f"image {image} det_scores", det_scores[image], expected_scores, SCORE_TOLERANCE)
        assert (np.diff(det_scores[image][: len(kept)]) <= 0).all(), "scores sorted descending"


@pytest.mark.parametrize("count", [0, 1, K])
def test_crop_graph_matches_pytorch_and_numpy(sessions: dict, count: int) -> None:
    rng = np.random.default_rng(count)
    image = random_image(rng, 439, 780)
    x1, y1 = rng.uniform(0, 600, K), rng.uniform(140, 480, K)
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 100, K), y1 + rng.uniform(3, 30, K)], 1)
    # The whole view detects the boxes; the tiles detect nothing (merging is tested below).
    num_dets = np.zeros((spec.DETECTOR_VIEWS, 1), np.int32)
    num_dets[0] = count
    det_boxes = np.zeros((spec.DETECTOR_VIEWS, K, 4), np.float32)
    det_boxes[0] = np.where(np.arange(K)[:, None] < count, boxes, 0)
    det_scores = np.zeros((spec.DETECTOR_VIEWS, K), np.float32)
    det_scores[0] = np.where(np.arange(K) < count, np.linspace(0.99, 0.9, K), 0)
    inputs = crop_feed(image, (num_dets, det_boxes, det_scores))
    outputs = sessions["crop"].run(None, inputs)
    with torch.no_grad():
        eager = Crop()(*(torch.from_numpy(value) for value in inputs.values()))
    reference = crop_step_reference(*inputs.values())
    for name, actual, torch_value, numpy_value in zip(
        ("crops", "plate_boxes", "plate_scores"), outputs, eager, reference, strict=True
    ):
        assert actual.shape[0] == max(count, 1)
        assert_close(f"{name} vs PyTorch", actual, torch_value, CROP_TOLERANCE)
        assert_close(f"{name} vs NumPy", actual, numpy_value, CROP_REFERENCE_TOLERANCE)
    if count == 0:
        assert not outputs[0].any() and not outputs[1].any() and outputs[2].tolist() == [0.0]


def test_tile_grid_one_exports_a_single_view_pipeline(networks, tmp_path: Path) -> None:
    graphs = served_graphs(networks, tile_grid=1)
    preprocess = export_graph(graphs["preprocess"], tmp_path / "preprocess.onnx")
    crop = export_graph(graphs["crop"], tmp_path / "crop.onnx")
    image = random_image(np.random.default_rng(3), 439, 780)
    (images,) = session(preprocess).run(None, {"image": image})
    assert images.shape == (1, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE)
    assert_close("single view vs NumPy", images, preprocess_reference(image, grid=1), 1)
    detections = (np.array([[1]], np.int32), np.full((1, K, 4), 0, np.float32), np.zeros((1, K), np.float32))
    detections[1][0, 0], detections[2][0, 0] = [77.5, 411.4, 108.2, 420.6], 0.9
    _, plate_boxes, plate_scores = session(crop).run(None, crop_feed(image, detections))
    assert plate_scores.tolist() == pytest.approx([0.9])
    assert plate_boxes[0].tolist() == pytest.approx([94.453, 330.769, 131.869, 341.981], abs=1e-3)


@pytest.mark.parametrize("batch", [1, 5])
def test_stn_and_lprnet_graphs_match_pytorch(sessions: dict, networks, batch: int) -> None:
    crops = (
        np.random.default_rng(batch).standard_normal((batch, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH)).astype(np.float32)
    )
    (rectified,) = sessions["stn"].run(None, {"crops": crops})
    (logits,) = sessions["lprnet"].run(None, {"rectified": rectified})
    with torch.no_grad():
        assert_close("rectified", rectified, networks.stn(torch.from_numpy(crops)), NETWORK_TOLERANCE)
        assert_close("logits", logits, networks.lprnet(torch.from_numpy(rectified)), NETWORK_TOLERANCE)
    assert logits.shape == (batch, 23, spec.LPRNET_STEPS)


def test_verification_passes_on_the_exported_graphs(onnx_dir: Path, networks) -> None:
    checks = verify(onnx_dir, networks)
    failed = [check for check in checks if not check.passed]
    assert not failed, f"failed checks: {failed}"
    assert {check.model for check in checks} == set(GRAPH_NAMES)


def test_published_recogniser_reads_the_real_plate_identically_in_onnx(sessions: dict, tmp_path: Path) -> None:
    weights = shared_dir() / "weights"
    if not (weights / "lprnet.pth").is_file() or not (shared_dir() / "real" / "car.jpg").is_file():
        pytest.skip("shared published weights or real photo absent")
    networks = load_networks(lprnet_weights=weights / "lprnet.pth", stn_weights=weights / "stn.pth", random_init=True)
    graphs = served_graphs(networks)
    paths = {name: export_graph(graphs[name], tmp_path / f"{name}.onnx") for name in ("stn", "lprnet")}
    scene = real_scene()
    crops, _, _ = sessions["crop"].run(None, crop_feed(scene.image, detections_for(scene, K, spec.TILE_GRID)))
    (rectified,) = session(paths["stn"]).run(None, {"crops": crops})
    (logits,) = session(paths["lprnet"]).run(None, {"rectified": rectified})
    with torch.no_grad():
        expected = networks.lprnet(networks.stn(torch.from_numpy(crops))).numpy()
    assert_close("logits of the car.jpg plate", logits, expected, NETWORK_TOLERANCE)
    assert (logits.argmax(1) == expected.argmax(1)).all(), "the greedy CTC path must not change"
