"""Reading and writing the weights of the three networks.

Checkpoint formats that the loaders accept (all read onto the CPU; fp16 tensors come back as fp32):

1. Ours, written by :func:`save_checkpoint`: ``{"arch": "lprnet" | "stn" | "yolov5n" | "yolov5s" | ...,
   "state_dict": {...}, "meta": {...}}``. Floating tensors may be stored in fp16 to keep files small; ``meta`` holds
   plain Python values only, so the file loads with ``torch.load(weights_only=True)``.
2. The published LPRNet / STN checkpoints: ``{"epoch": int, "net_state_dict": {...}}``.
3. A plain state dict (for the detector: ultralytics key names, ``model.0.conv.weight`` ... ``model.24.anchors``).
4. Detector only: an ultralytics YOLOv5 v7.0 training checkpoint (``best.pt`` / ``last.pt``), a pickled dict
   ``{"epoch", "model": DetectionModel, "ema": DetectionModel | None, "optimizer", "opt", ...}`` whose models are
   pickled objects (usually fp16). It is read without the ultralytics code: see :mod:`alpr.models.restricted_pickle`.
   The EMA model is preferred when present, as ultralytics does. Also accepted: ``{"model": <ultralytics state
   dict>}``.

For the detector, the scale (n/s/m/l/x), the class count and the anchors are read from the weights themselves
(first convolution width, depth of the 9-block C3, ``Detect`` output width, ``model.24.anchors``); an ultralytics
checkpoint's ``yaml`` depth and width multiples and ``nc`` are checked against them.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import alpr.models.restricted_pickle as restricted_pickle
from alpr.models.lprnet import LPRNet
from alpr.models.stn import STN
from alpr.models.yolov5 import ARCHITECTURE, SCALES, STRIDES, YOLOv5, make_divisible, scaled_repeats

LPRNET_ARCH = "lprnet"
STN_ARCH = "stn"
DETECTOR_ARCHS = tuple(f"yolov5{scale}" for scale in SCALES)

_DETECT = len(ARCHITECTURE) - 1  # index of the Detect layer: 24
_DEEPEST_C3 = 6  # the C3 with 9 blocks at depth 1.0, which tells the depth multiples apart


@dataclass
class Checkpoint:
    """Weights read from any supported format: fp32 tensors, the architecture name when recorded, and metadata."""

    state_dict: dict[str, torch.Tensor]
    arch: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(model: nn.Module, path: str | Path, arch: str, *, half: bool = False, **meta: Any) -> None:
    """Write ``model`` in our format; ``half`` stores floating tensors (except anchors) in fp16."""
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point() and not key.endswith("anchors"):
            tensor = tensor.half()
        state[key] = tensor.clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"arch": arch, "state_dict": state, "meta": meta}, partial)
    os.replace(partial, path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Weights and metadata of a checkpoint in any of the formats of this module's docstring."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Pickled model objects (ultralytics): read through stand-ins, never importing or running their code.
        payload = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle.as_pickle_module()
        )
    checkpoint = _interpret(payload)
    checkpoint.state_dict = {key: _as_fp32(tensor) for key, tensor in checkpoint.state_dict.items()}
    return checkpoint


def load_lprnet(path: str | Path) -> LPRNet:
    """LPRNet in eval mode from a checkpoint (ours, the published one, or a plain state dict)."""
    checkpoint = _expect_arch(read_checkpoint(path), (LPRNET_ARCH,), path)
    model = LPRNet(num_classes=checkpoint.state_dict["container.weight"].shape[0])
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()


def load_stn(path: str | Path) -> STN:
    """STN in eval mode from a checkpoint (ours, the published one, or a plain state dict)."""
    checkpoint = _expect_arch(read_checkpoint(path), (STN_ARCH,), path)
    model = STN()
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()


def load_detector(path: str | Path) -> YOLOv5:
    """YOLOv5 v7.0 in eval mode from ours, an ultralytics ``best.pt``/``last.pt``, or an ultralytics state dict."""
    checkpoint = _expect_arch(read_checkpoint(path), DETECTOR_ARCHS, path)
    scale, num_classes, anchors = detector_config(checkpoint.state_dict)
    if checkpoint.arch is not None and checkpoint.arch != f"yolov5{scale}":
        raise ValueError(f"{path}: recorded as {checkpoint.arch} but its weights are yolov5{scale}")
    multiples: tuple[Any, Any] = checkpoint.meta.get("depth_multiple"), checkpoint.meta.get("width_multiple")
    if None not in multiples and tuple(float(m) for m in multiples) != SCALES[scale]:
        raise ValueError(f"{path}: depth/width multiples {multiples} are not those of a YOLOv5 v7.0 scale")
    recorded_classes = checkpoint.meta.get("nc", checkpoint.meta.get("num_classes"))
    if recorded_classes not in (None, num_classes):
        raise ValueError(f"{path}: recorded {recorded_classes} classes but the Detect layer predicts {num_classes}")
    model = YOLOv5(scale, num_classes, anchors)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()


def detector_config(state_dict: dict[str, torch.Tensor]) -> tuple[str, int, torch.Tensor]:
    """Scale, class count and pixel anchors ``[3, 3, 2]`` of YOLOv5 v7.0 weights with ultralytics key names."""
    try:
        stem_width = state_dict["model.0.conv.weight"].shape[0]
        anchors = state_dict[f"model.{_DETECT}.anchors"]
        outputs = state_dict[f"model.{_DETECT}.m.0.weight"].shape[0]
    except KeyError as missing:
        raise ValueError(f"not YOLOv5 v7.0 detector weights: no {missing}") from None
    block = re.compile(rf"model\.{_DEEPEST_C3}\.m\.(\d+)\.")
    depth = len({match.group(1) for key in state_dict if (match := block.match(key))})
    stem_channels, deepest_repeats = ARCHITECTURE[0].channels, ARCHITECTURE[_DEEPEST_C3].repeats
    for scale, (depth_multiple, width_multiple) in SCALES.items():
        if make_divisible(stem_channels * width_multiple) == stem_width and (
            scaled_repeats(deepest_repeats, depth_multiple) == depth
        ):
            num_classes = outputs // anchors.shape[1] - 5
            strides = torch.tensor(STRIDES, dtype=anchors.dtype).view(-1, 1, 1)
            return scale, num_classes, anchors * strides
    raise ValueError(f"no YOLOv5 v7.0 scale has a {stem_width}-channel stem and {depth} blocks in layer 6")


def _interpret(payload: Any) -> Checkpoint:
    if not isinstance(payload, dict):
        raise ValueError(f"unsupported checkpoint: a {type(payload).__name__}, not a dict")
    if "state_dict" in payload and "arch" in payload:
        return Checkpoint(dict(payload["state_dict"]), payload["arch"], dict(payload.get("meta") or {}))
    if "net_state_dict" in payload:
        return Checkpoint(dict(payload["net_state_dict"]), meta={"epoch": payload.get("epoch")})
    if "model" in payload or "ema" in payload:
        return _interpret_ultralytics(payload)
    if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
        return Checkpoint(dict(payload))
    raise ValueError(f"unsupported checkpoint layout with keys {sorted(map(str, payload))[:8]}")


def _interpret_ultralytics(payload: dict[str, Any]) -> Checkpoint:
    model = payload.get("ema") or payload.get("model")
    if isinstance(model, dict):
        return Checkpoint(dict(model), meta={"epoch": payload.get("epoch")})
    if not restricted_pickle.is_stand_in(model) or "_modules" not in model.__dict__:
        raise ValueError(f"unsupported checkpoint: its 'model' is {model!r}, not a pickled module")
    attributes = model.__dict__
    yaml = attributes.get("yaml")
    config = yaml if isinstance(yaml, dict) else {}
    meta = {
        "source": f"{model.pickled_module}.{model.pickled_name}",
        "epoch": payload.get("epoch"),
        "nc": attributes.get("nc", config.get("nc")),
        "names": attributes.get("names"),
        "depth_multiple": config.get("depth_multiple"),
        "width_multiple": config.get("width_multiple"),
    }
    return Checkpoint(restricted_pickle.module_state_dict(model), meta=meta)


def _expect_arch(checkpoint: Checkpoint, archs: tuple[str, ...], path: str | Path) -> Checkpoint:
    if checkpoint.arch is not None and checkpoint.arch not in archs:
        raise ValueError(f"{path} holds a {checkpoint.arch} checkpoint, expected {' or '.join(archs)}")
    return checkpoint


def _as_fp32(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.float() if tensor.is_floating_point() else tensor
