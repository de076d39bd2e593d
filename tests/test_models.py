"""The three networks: published weights, agreement with upstream LPRNet, YOLOv5 v7.0 layout, checkpoint formats."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from upstream_reference import upstream_lprnet_forward, upstream_stn_forward

from alpr.ctc import greedy_decode, path_confidence
from alpr.models import STN, LPRNet, YOLOv5, load_detector, load_lprnet, load_stn, read_checkpoint, save_checkpoint
from alpr.paths import shared_dir
from alpr.spec import CROP_HEIGHT, CROP_MARGIN, CROP_WIDTH, PLATE_MEAN, PLATE_SCALE

WEIGHTS = shared_dir() / "weights"
REAL = shared_dir() / "real"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shared_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared data {path.name} is not available")
    return path


@pytest.fixture(scope="module")
def published_lprnet() -> LPRNet:
    return load_lprnet(shared_file(WEIGHTS / "lprnet.pth"))


@pytest.fixture(scope="module")
def published_stn() -> STN:
    return load_stn(shared_file(WEIGHTS / "stn.pth"))


def random_crops(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, CROP_HEIGHT, CROP_WIDTH, generator=torch.Generator().manual_seed(seed))


def reference_crop(image_bgr: np.ndarray, box_1920x1080: list[float]) -> torch.Tensor:
    """The upstream recognition input for one box: see the README of the shared real photos."""
    frame = cv2.resize(image_bgr, (1920, 1080), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    x1, y1, x2, y2 = box_1920x1080
    margin = CROP_MARGIN * (y2 - y1)
    crop = frame[int(y1 - margin) : int(y2 + margin), int(x1) : int(x2)]
    crop = cv2.resize(crop, (CROP_WIDTH, CROP_HEIGHT), interpolation=cv2.INTER_CUBIC)
    chw = (np.transpose(np.float32(crop), (2, 0, 1)) - PLATE_MEAN) * PLATE_SCALE
    return torch.from_numpy(chw)[None]


@pytest.fixture(scope="module")
def real_plate() -> tuple[torch.Tensor, str]:
    labels = json.loads(shared_file(REAL / "labels.json").read_text())
    plate = labels["car.jpg"]["plates"][0]
    image = cv2.imread(str(shared_file(REAL / "car.jpg")))
    return reference_crop(image, plate["box_xyxy_in_1920x1080"]), plate["text"]


# ---------------------------------------------------------------------------------------------- LPRNet and STN


def test_published_checkpoints_load_strictly(published_lprnet: LPRNet, published_stn: STN) -> None:
    assert count_parameters(published_lprnet) == 272_781
    assert count_parameters(published_stn) == 55_430
    assert not published_lprnet.training and not published_stn.training


def test_lprnet_output_shape() -> None:
    with torch.no_grad():
        assert LPRNet().eval()(random_crops(3, 0)).shape == (3, 23, 18)


def lprnet_under_test(name: str) -> LPRNet:
    if name == "published":
        return load_lprnet(shared_file(WEIGHTS / "lprnet.pth"))
    torch.manual_seed(1)
    model = LPRNet()
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("weights", ["random", "published"])
def test_lprnet_matches_upstream_at_batch_one(weights: str) -> None:
    model = lprnet_under_test(weights)
    crops = random_crops(4, seed=2)
    with torch.no_grad():
        for crop in crops.split(1):
            assert (model(crop) - upstream_lprnet_forward(model, crop)).abs().max().item() <= 1e-5


def test_lprnet_matches_upstream_on_the_real_plate(published_lprnet: LPRNet, published_stn: STN, real_plate) -> None:
    crop, _ = real_plate
    with torch.no_grad():
        rectified = published_stn(crop)
        difference = (published_lprnet(rectified) - upstream_lprnet_forward(published_lprnet, rectified)).abs().max()
    assert difference.item() <= 1e-5


@pytest.mark.parametrize("weights", ["random", "published"])
def test_lprnet_logits_do_not_depend_on_the_batch(weights: str) -> None:
    model = lprnet_under_test(weights).double()
    crop = random_crops(1, seed=3).double()
    neighbours = random_crops(7, seed=4).double() * 3.0  # brighter, higher-contrast crops
    batch = torch.cat((crop, neighbours))
    with torch.no_grad():
        assert (model(crop) - model(batch)[:1]).abs().max().item() <= 1e-5
        # Upstream's batch-wide normalisation makes the same crop read differently next to other crops.
        upstream_shift = upstream_lprnet_forward(model, crop) - upstream_lprnet_forward(model, batch)[:1]
        assert upstream_shift.abs().max().item() > 1e-2


def test_lprnet_batch_independence_in_float32() -> None:
    model = lprnet_under_test("random")
    crop, neighbours = random_crops(1, seed=5), random_crops(7, seed=6) * 3.0
    with torch.no_grad():
        alone = model(crop)
        batched = model(torch.cat((crop, neighbours)))[:1]
    # Batched convolutions round differently; allow float32 noise relative to the logit scale.
    assert (alone - batched).abs().max().item() <= 1e-5 * max(1.0, alone.abs().max().item())


def test_stn_starts_as_the_identity() -> None:
    crops = random_crops(2, seed=7)
    with torch.no_grad():
        assert (STN()(crops) - crops).abs().max().item() <= 1e-4  # float rounding of the sampling grid


def stn_under_test(name: str) -> STN:
    if name == "published":
        return load_stn(shared_file(WEIGHTS / "stn.pth"))
    torch.manual_seed(2)
    model = STN().eval()
    with torch.no_grad():  # a regressor that predicts a different, non-trivial map for every crop
        model.fc_loc[2].weight.normal_(std=0.05)
    return model


@pytest.mark.parametrize("weights", ["random", "published"])
def test_stn_matches_upstream_affine_grid(weights: str) -> None:
    model = stn_under_test(weights)
    crops = random_crops(4, seed=9)
    with torch.no_grad():
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        assert (model.affine(crops) - identity).abs().max().item() > 1e-3  # a real warp, not the identity
        assert (model(crops) - upstream_stn_forward(model, crops)).abs().max().item() <= 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter is deprecated
@pytest.mark.parametrize("network", ["lprnet", "stn"])
def test_recogniser_networks_export_to_onnx_opset_17(network: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = lprnet_under_test("random") if network == "lprnet" else stn_under_test("random")
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (random_crops(1, seed=10),),
        buffer,
        input_names=["crops"],
        output_names=["out"],
        dynamic_axes={"crops": {0: "batch"}, "out": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    operators = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert not operators & {"AffineGrid", "MaxPool3d"}  # AffineGrid has no TensorRT importer
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    crops = random_crops(5, seed=11)
    with torch.no_grad():
        expected = model(crops).numpy()
    (out,) = session.run(None, {"crops": crops.numpy()})
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_reference_path_reads_the_real_plate(published_lprnet: LPRNet, published_stn: STN, real_plate) -> None:
    crop, text = real_plate
    with torch.no_grad():
        logits = published_lprnet(published_stn(crop))
    assert greedy_decode(logits.numpy()) == [text] == ["B840CK197"]
    assert 0.0 < path_confidence(logits.numpy())[0] <= 1.0


# --------------------------------------------------------------------------------------------------------- YOLOv5

ULTRALYTICS_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


@pytest.mark.parametrize(
    ("scale", "num_classes", "parameters", "fused_parameters"),
    [
        # ultralytics' model summaries: yolov5s 7,235,389 built and 7,225,885 fused; yolov5n 1,872,157 built.
        ("s", 80, 7_235_389, 7_225_885),
        ("n", 80, 1_872_157, 1_867_405),
        ("n", 2, 1_766_623, 1_761_871),
        ("n", 1, 1_765_270, 1_760_518),
    ],
)
def test_yolov5_parameter_counts(scale: str, num_classes: int, parameters: int, fused_parameters: int) -> None:
    model = YOLOv5(scale, num_classes)
    assert count_parameters(model) == parameters
    assert count_parameters(model.fuse()) == fused_parameters


def test_yolov5_state_dict_uses_ultralytics_names() -> None:
    state = YOLOv5("s", 80).state_dict()
    expected_shapes = {
        "model.0.conv.weight": (32, 3, 6, 6),
        "model.0.bn.running_var": (32,),
        "model.2.cv1.conv.weight": (32, 64, 1, 1),
        "model.2.m.0.cv2.conv.weight": (32, 32, 3, 3),
        "model.4.m.1.cv1.bn.weight": (64,),
        "model.8.cv3.conv.weight": (512, 512, 1, 1),
        "model.9.cv1.conv.weight": (256, 512, 1, 1),
        "model.9.cv2.conv.weight": (512, 1024, 1, 1),
        "model.13.cv1.conv.weight": (128, 512, 1, 1),
        "model.23.m.0.cv2.conv.weight": (256, 256, 3, 3),
        "model.24.anchors": (3, 3, 2),
        "model.24.m.0.weight": (255, 128, 1, 1),
        "model.24.m.2.bias": (255,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "model.4.m.2.cv1.conv.weight" not in state  # 6 blocks * 0.33 -> 2
    assert all(key.startswith("model.") for key in state)
    assert state["model.0.bn.num_batches_tracked"].dtype == torch.int64
    pixel_anchors = state["model.24.anchors"] * torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)
    assert pixel_anchors.flatten().tolist() == [v for level in ULTRALYTICS_ANCHORS for v in level]


def test_yolov5_layers_follow_ultralytics_conventions() -> None:
    model = YOLOv5("n", 1)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms and all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in batch_norms)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    # Bias priors: ~8 objects per 640x640 image, added to PyTorch's default bias init (|b| <= 1/sqrt(fan_in)).
    for conv, stride in zip(model.head.m, (8, 16, 32), strict=True):
        objectness = conv.bias.detach().view(3, -1)[:, 4]
        bound = 1 / math.sqrt(conv.in_channels)
        assert (objectness - math.log(8 / (640 / stride) ** 2)).abs().max().item() <= bound


def test_yolov5_flipped_anchors_are_reordered() -> None:
    reversed_anchors = list(reversed(ULTRALYTICS_ANCHORS))
    assert torch.equal(YOLOv5("n", 1, reversed_anchors).anchors, YOLOv5("n", 1).anchors)


def test_yolov5_train_and_eval_outputs() -> None:
    model = YOLOv5("n", 1)
    with torch.no_grad():
        maps = model.train()(torch.rand(2, 3, 128, 160))
        assert [tuple(m.shape) for m in maps] == [(2, 3, 16, 20, 6), (2, 3, 8, 10, 6), (2, 3, 4, 5, 6)]
        decoded = model.eval()(torch.rand(2, 3, 640, 640))
    assert decoded.shape == (2, 25200, 6)


def test_yolov5_eval_decoding_matches_the_ultralytics_formula() -> None:
    model = YOLOv5("n", 3).eval()
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        decoded = model(image)
        model.head.train()  # raw maps, with the backbone's batch norms still in eval mode
        maps = model(image)
    rows = []
    for level, raw in enumerate(maps):
        stride = model.stride[level].item()
        p = raw.sigmoid()
        _, anchors, ny, nx, _ = p.shape
        for a in range(anchors):
            anchor_w, anchor_h = (model.anchors[level, a] * stride).tolist()
            for y in range(ny):
                for x in range(nx):
                    cell = p[0, a, y, x]
                    cx = (cell[0] * 2 - 0.5 + x) * stride
                    cy = (cell[1] * 2 - 0.5 + y) * stride
                    w = (cell[2] * 2) ** 2 * anchor_w
                    h = (cell[3] * 2) ** 2 * anchor_h
                    rows.append(torch.cat((torch.stack((cx, cy, w, h)), cell[4:])))
    assert torch.allclose(decoded[0], torch.stack(rows), rtol=1e-5, atol=1e-4)


def test_yolov5_fuse_keeps_outputs() -> None:
    torch.manual_seed(3)
    model = YOLOv5("n", 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        reference = model.eval()(image)
        fused = model.fuse()(image)
    assert torch.allclose(fused, reference, rtol=1e-4, atol=1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter is deprecated
def test_yolov5_exports_to_onnx_with_a_dynamic_batch() -> None:
    ort = pytest.importorskip("onnxruntime")
    model = YOLOv5("n", 1).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 128, 128),),
        buffer,
        input_names=["images"],
        output_names=["predictions"],
        dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        expected = model(images).numpy()
    (predictions,) = session.run(None, {"images": images.numpy()})
    assert predictions.shape == (3, 3 * (16 * 16 + 8 * 8 + 4 * 4), 6)
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------- checkpoint formats


def test_our_format_round_trip_in_half_precision(tmp_path: Path) -> None:
    model = YOLOv5("n", 2).eval()
    path = tmp_path / "detector.pt"
    save_checkpoint(model, path, "yolov5n", half=True, names=["plate", "other"])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["state_dict"]["model.0.conv.weight"].dtype == torch.float16
    assert raw["meta"] == {"names": ["plate", "other"]}
    loaded = load_detector(path)
    assert loaded.num_classes == 2 and loaded.scale == "n"
    assert all(t.dtype != torch.float16 for t in loaded.state_dict().values())
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(image), model(image), rtol=1e-2, atol=0.5)


def test_lprnet_and_stn_round_trip(tmp_path: Path) -> None:
    lprnet, stn = lprnet_under_test("random"), STN().eval()
    save_checkpoint(lprnet, tmp_path / "lprnet.pt", "lprnet", vocabulary="0123456789ABEKMHOPCTYX-")
    save_checkpoint(stn, tmp_path / "stn.pt", "stn")
    crops = random_crops(2, seed=8)
    with torch.no_grad():
        assert torch.equal(load_lprnet(tmp_path / "lprnet.pt")(crops), lprnet(crops))
        assert torch.equal(load_stn(tmp_path / "stn.pt")(crops), stn(crops))
    assert read_checkpoint(tmp_path / "lprnet.pt").meta["vocabulary"].endswith("-")
    with pytest.raises(ValueError, match="stn"):
        load_lprnet(tmp_path / "stn.pt")


def test_plain_and_published_layouts(tmp_path: Path) -> None:
    model = YOLOv5("s", 1).eval()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    loaded = load_detector(tmp_path / "plain.pt")
    assert loaded.scale == "s" and loaded.num_classes == 1
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded.state_dict().items())
    lprnet = lprnet_under_test("random")
    torch.save({"epoch": 3, "net_state_dict": lprnet.state_dict()}, tmp_path / "published.pth")
    assert torch.equal(load_lprnet(tmp_path / "published.pth").container.weight, lprnet.container.weight)


# An ultralytics checkpoint pickles objects of classes from its source tree (models/yolo.py, models/common.py).
# The test builds such a file with throwaway classes registered under those module names, then unregisters them.
_ULTRALYTICS_CLASSES = {
    "Conv": "models.common",
    "Bottleneck": "models.common",
    "C3": "models.common",
    "SPPF": "models.common",
    "Concat": "models.common",
    "Detect": "models.yolo",
    "DetectionModel": "models.yolo",
}


def _ultralytics_tree(module: nn.Module, classes: dict[str, type]) -> nn.Module:
    """A copy of ``module`` whose ``alpr`` blocks are re-created as objects of the throwaway ultralytics classes."""
    name = type(module).__name__
    if name not in classes:  # torch.nn layers are pickled as they are
        clone = type(module).__new__(type(module))
        clone.__dict__.update(module.__dict__)
    else:
        clone = classes[name].__new__(classes[name])
        clone.__dict__.update(module.__dict__)
        if name == "Detect":  # ultralytics keeps the strides as a plain attribute, plus grid caches
            clone.__dict__["_buffers"] = {"anchors": module.anchors}
            clone.__dict__.update(stride=module.stride.clone(), grid=[torch.empty(0)] * 3, inplace=True)
    clone.__dict__["_modules"] = {key: _ultralytics_tree(child, classes) for key, child in module._modules.items()}
    return clone


def _write_ultralytics_checkpoint(model: YOLOv5, path: Path, scale_yaml: dict) -> None:
    modules = {name: types.ModuleType(name) for name in ("models", "models.common", "models.yolo")}
    classes = {}
    for class_name, module_name in _ULTRALYTICS_CLASSES.items():
        cls = type(class_name, (nn.Module,), {"__module__": module_name})
        setattr(modules[module_name], class_name, cls)
        classes[class_name] = cls
    sys.modules.update(modules)
    try:
        detection_model = classes["DetectionModel"]()
        layers = copy.deepcopy(model.model)  # .half() below must not touch the caller's model
        detection_model.model = nn.Sequential(*(_ultralytics_tree(layer, classes) for layer in layers))
        detection_model.yaml = scale_yaml
        detection_model.nc = model.num_classes
        detection_model.names = [f"class{i}" for i in range(model.num_classes)]
        detection_model.stride = model.stride.clone()
        detection_model.hyp = {"lr0": 0.01, "box": 0.05}
        detection_model.half()
        for parameter in detection_model.parameters():
            parameter.requires_grad_(False)
        checkpoint = {
            "epoch": -1,
            "best_fitness": None,
            "model": detection_model,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "opt": {"imgsz": 640, "weights": "yolov5n.pt"},
            "git": {"remote": "", "branch": "master", "commit": "915bbf2"},
            "date": "2022-11-22T00:00:00",
        }
        torch.save(checkpoint, path)
    finally:
        for name in modules:
            del sys.modules[name]


@pytest.mark.parametrize("scale", ["n", "s"])
def test_ultralytics_checkpoint_loads_without_ultralytics(tmp_path: Path, scale: str) -> None:
    from alpr.models.yolov5 import SCALES

    torch.manual_seed(4)
    model = YOLOv5(scale, 2).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "best.pt"
    depth, width = SCALES[scale]
    _write_ultralytics_checkpoint(model, path, {"nc": 2, "depth_multiple": depth, "width_multiple": width})
    assert "models.yolo" not in sys.modules

    loaded = load_detector(path)
    assert (loaded.scale, loaded.num_classes) == (scale, 2)
    expected = {
        key: tensor.half().float() if tensor.is_floating_point() else tensor
        for key, tensor in model.state_dict().items()
    }
    state = loaded.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    reference = YOLOv5(scale, 2)
    reference.load_state_dict(expected)
    image = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(image), reference.eval()(image))
    assert read_checkpoint(path).meta["names"] == ["class0", "class1"]


def test_ultralytics_checkpoint_with_wrong_multiples_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    _write_ultralytics_checkpoint(YOLOv5("n", 1), path, {"nc": 1, "depth_multiple": 0.33, "width_multiple": 0.5})
    with pytest.raises(ValueError, match="multiples"):
        load_detector(path)


class _RunsACommand:
    """A pickle payload that would run a shell command if unpickled with the standard pickle module."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_loading_never_runs_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "malicious.pt"
    torch.save({"model": _RunsACommand(marker), "epoch": 0}, path)
    with pytest.raises(ValueError):
        load_detector(path)
    assert not marker.exists()
