"""YOLOv5 v7.0 detection model (Jocher et al., ultralytics/yolov5, release v7.0), P5 variants n/s/m/l/x.

CSP-Darknet backbone of C3 blocks ending in SPPF, a PANet neck, and an anchor-based ``Detect`` head at strides
8, 16 and 32. Module names, order and shapes are those of ultralytics' ``DetectionModel`` built from
``yolov5{n,s,m,l,x}.yaml``, so ``state_dict()`` keys are identical (``model.0.conv.weight`` ... ``model.24.anchors``)
and ultralytics weights load strictly. The anchors buffer is stored as ultralytics stores it: in units of each
level's stride.

Input: float ``[B, 3, H, W]`` RGB in 0..1, H and W multiples of 32. In ``train()`` mode the model returns the three
raw maps ``[B, 3, H/s, W/s, 5 + classes]`` (s = 8, 16, 32) for the loss. In ``eval()`` mode it returns the decoded
predictions ``[B, N, 5 + classes]``, N = 3 * (H/8 * W/8 + H/16 * W/16 + H/32 * W/32), rows ``(cx, cy, w, h, objectness,
class scores...)`` in input pixels, decoded as ultralytics ``Detect`` does: after a sigmoid,
``xy = (2 * xy - 0.5 + cell) * stride`` and ``wh = (2 * wh) ** 2 * anchor``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# (depth multiple, width multiple) of each scale, from the yolov5{n,s,m,l,x}.yaml files.
SCALES: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}
# Anchor (width, height) pairs in pixels for P3/8, P4/16 and P5/32.
DEFAULT_ANCHORS: tuple[tuple[int, ...], ...] = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)
STRIDES = (8, 16, 32)

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


@dataclass(frozen=True)
class Layer:
    """One row of the model table: where the input comes from, how many blocks, which block, its width."""

    sources: tuple[int, ...]  # -1 is the previous layer (or the image for the first one)
    repeats: int
    block: str
    channels: int = 0  # at width multiple 1.0
    kernel: int = 1
    stride: int = 1
    padding: int | None = None
    shortcut: bool = True


# The layer table of yolov5*.yaml (v7.0): backbone 0-9, head 10-23, Detect 24.
ARCHITECTURE: tuple[Layer, ...] = (
    Layer((-1,), 1, "Conv", 64, kernel=6, stride=2, padding=2),  # 0: P1/2
    Layer((-1,), 1, "Conv", 128, kernel=3, stride=2),  # 1: P2/4
    Layer((-1,), 3, "C3", 128),  # 2
    Layer((-1,), 1, "Conv", 256, kernel=3, stride=2),  # 3: P3/8
    Layer((-1,), 6, "C3", 256),  # 4
    Layer((-1,), 1, "Conv", 512, kernel=3, stride=2),  # 5: P4/16
    Layer((-1,), 9, "C3", 512),  # 6
    Layer((-1,), 1, "Conv", 1024, kernel=3, stride=2),  # 7: P5/32
    Layer((-1,), 3, "C3", 1024),  # 8
    Layer((-1,), 1, "SPPF", 1024, kernel=5),  # 9
    Layer((-1,), 1, "Conv", 512),  # 10
    Layer((-1,), 1, "Upsample"),  # 11
    Layer((-1, 6), 1, "Concat"),  # 12: with backbone P4
    Layer((-1,), 3, "C3", 512, shortcut=False),  # 13
    Layer((-1,), 1, "Conv", 256),  # 14
    Layer((-1,), 1, "Upsample"),  # 15
    Layer((-1, 4), 1, "Concat"),  # 16: with backbone P3
    Layer((-1,), 3, "C3", 256, shortcut=False),  # 17: P3/8 output
    Layer((-1,), 1, "Conv", 256, kernel=3, stride=2),  # 18
    Layer((-1, 14), 1, "Concat"),  # 19: with head P4
    Layer((-1,), 3, "C3", 512, shortcut=False),  # 20: P4/16 output
    Layer((-1,), 1, "Conv", 512, kernel=3, stride=2),  # 21
    Layer((-1, 10), 1, "Concat"),  # 22: with head P5
    Layer((-1,), 3, "C3", 1024, shortcut=False),  # 23: P5/32 output
    Layer((17, 20, 23), 1, "Detect"),  # 24
)


def make_divisible(x: float, divisor: int = 8) -> int:
    """The smallest multiple of ``divisor`` that is >= ``x``."""
    return math.ceil(x / divisor) * divisor


def scaled_repeats(repeats: int, depth_multiple: float) -> int:
    """Number of blocks after the depth multiple (ultralytics rounds, keeping at least one)."""
    return max(round(repeats * depth_multiple), 1) if repeats > 1 else repeats


class Conv(nn.Module):
    """Convolution without bias, batch norm, SiLU; 'same' padding for odd kernels unless given."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2 if padding is None else padding, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)  # nn.Identity once fused
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 convolution, with a residual connection when asked and the widths agree."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 0.5) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(hidden, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions: a bottleneck branch and a shortcut branch, concatenated and mixed."""

    def __init__(self, c_in: int, c_out: int, repeats: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(c_in, hidden, 1)
        self.cv3 = Conv(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, expansion=1.0) for _ in range(repeats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools, equivalent to parallel 5, 9 and 13 pools."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel_size=kernel, stride=1, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        pooled1 = self.m(x)
        pooled2 = self.m(pooled1)
        return self.cv2(torch.cat((x, pooled1, pooled2, self.m(pooled2)), 1))


class Concat(nn.Module):
    """Concatenate a list of maps along channels."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Detect(nn.Module):
    """Per-level 1x1 convolutions predicting, for each anchor, box, objectness and class scores."""

    # Buffers registered in __init__ (declared for the type checker: nn.Module types them as ``Tensor | Module``).
    stride: torch.Tensor
    anchors: torch.Tensor

    def __init__(self, num_classes: int, anchors_px: torch.Tensor, in_channels: Sequence[int]) -> None:
        super().__init__()
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl, self.na = anchors_px.shape[:2]
        # Anchors in units of each level's stride (persistent, as in ultralytics); strides are not saved.
        self.register_buffer("stride", torch.tensor(STRIDES, dtype=torch.float32), persistent=False)
        self.register_buffer("anchors", anchors_px / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        maps = []
        for conv, feature in zip(self.m, features, strict=True):
            p = conv(feature)
            ny, nx = p.shape[2], p.shape[3]
            maps.append(p.view(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return maps
        return torch.cat([self.decode(p, level) for level, p in enumerate(maps)], 1)

    def decode(self, p: torch.Tensor, level: int) -> torch.Tensor:
        """Boxes in input pixels ``[B, na * ny * nx, no]`` of one level's raw map ``[B, na, ny, nx, no]``."""
        ny, nx = p.shape[2], p.shape[3]
        stride = self.stride[level]
        xy, wh, scores = p.sigmoid().split((2, 2, self.no - 4), 4)
        xy = (xy * 2 + self._cell_offsets(ny, nx, p)) * stride
        wh = (wh * 2) ** 2 * (self.anchors[level] * stride).view(1, self.na, 1, 1, 2)
        return torch.cat((xy, wh, scores), 4).view(-1, self.na * ny * nx, self.no)

    @staticmethod
    def _cell_offsets(ny: int, nx: int, like: torch.Tensor) -> torch.Tensor:
        """``[1, 1, ny, nx, 2]`` cell corners (x, y) minus 0.5; built from the shape so any batch size exports."""
        ys = torch.arange(ny, device=like.device, dtype=like.dtype)
        xs = torch.arange(nx, device=like.device, dtype=like.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((grid_x, grid_y), 2).view(1, 1, ny, nx, 2) - 0.5

    def initialize_biases(self) -> None:
        """Prior biases for training from scratch: about 8 objects per 640x640 image, class probability 0.6/nc."""
        with torch.no_grad():
            for conv, stride in zip(self.m, self.stride.tolist(), strict=True):
                assert isinstance(conv, nn.Conv2d) and conv.bias is not None  # built with a bias in __init__
                bias = conv.bias.view(self.na, -1)
                bias[:, 4] += math.log(8 / (640 / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / (self.nc - 0.99999))


def _anchor_tensor(anchors: Sequence[Sequence[float]] | torch.Tensor | None) -> torch.Tensor:
    """Anchors in pixels as ``[levels, anchors, 2]``, ordered like the strides (small anchors on P3)."""
    if anchors is None:
        anchors = DEFAULT_ANCHORS
    tensor = torch.as_tensor(anchors, dtype=torch.float32).reshape(len(STRIDES), -1, 2).clone()
    mean_area = tensor.prod(-1).mean(-1)
    if (mean_area[-1] - mean_area[0]).sign() < 0:  # strides grow, so anchor sizes must grow too
        tensor = tensor.flip(0)
    return tensor


class YOLOv5(nn.Module):
    """YOLOv5 v7.0 detector of the given scale (``n``, ``s``, ``m``, ``l`` or ``x``)."""

    def __init__(
        self,
        scale: str = "n",
        num_classes: int = 1,
        anchors: Sequence[Sequence[float]] | torch.Tensor | None = None,
    ) -> None:
        """``anchors``: pixels, three rows of three (w, h) pairs for P3/8, P4/16, P5/32; ultralytics' by default."""
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"unknown YOLOv5 scale {scale!r}; expected one of {', '.join(SCALES)}")
        self.scale = scale
        self.num_classes = num_classes
        depth_multiple, width_multiple = SCALES[scale]

        layers: list[nn.Module] = []
        out_channels: list[int] = []
        self.sources: list[tuple[int, ...]] = []
        for index, spec in enumerate(ARCHITECTURE):
            sources = tuple(s if s >= 0 else index + s for s in spec.sources)  # -1 at layer 0: the image
            c_in = [out_channels[s] if s >= 0 else 3 for s in sources]
            c_out = make_divisible(spec.channels * width_multiple) if spec.channels else c_in[0]
            layer: nn.Module
            if spec.block == "Conv":
                layer = Conv(c_in[0], c_out, spec.kernel, spec.stride, spec.padding)
            elif spec.block == "C3":
                layer = C3(c_in[0], c_out, scaled_repeats(spec.repeats, depth_multiple), spec.shortcut)
            elif spec.block == "SPPF":
                layer = SPPF(c_in[0], c_out, spec.kernel)
            elif spec.block == "Upsample":
                layer = nn.Upsample(scale_factor=2, mode="nearest")
            elif spec.block == "Concat":
                layer, c_out = Concat(), sum(c_in)
            elif spec.block == "Detect":
                layer = Detect(num_classes, _anchor_tensor(anchors), c_in)
            else:  # pragma: no cover - the table above only names the blocks handled here
                raise AssertionError(spec.block)
            layers.append(layer)
            out_channels.append(c_out)
            self.sources.append(sources)
        self.model = nn.Sequential(*layers)
        # Outputs that a later layer reads other than as its immediate predecessor.
        self.kept = {s for index, sources in enumerate(self.sources) for s in sources if s != index - 1 and s >= 0}
        self.head.initialize_biases()

    @property
    def head(self) -> Detect:
        return cast(Detect, self.model[-1])

    @property
    def stride(self) -> torch.Tensor:
        """``[8, 16, 32]``: the stride of each output level."""
        return self.head.stride

    @property
    def anchors(self) -> torch.Tensor:
        """``[3, 3, 2]`` anchor (w, h) in units of each level's stride, as the YOLOv5 loss expects them."""
        return self.head.anchors

    def fuse(self) -> YOLOv5:
        """Fold every batch norm into its convolution (inference only: the state-dict keys change)."""
        self.eval()
        for module in self.modules():
            if isinstance(module, Conv) and isinstance(module.bn, nn.BatchNorm2d):
                module.conv = fuse_conv_bn_eval(module.conv, module.bn)
                module.bn = nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """Raw maps per level in training mode, decoded boxes ``[B, N, 5 + classes]`` in eval mode."""
        kept: dict[int, torch.Tensor] = {}
        for index, (layer, sources) in enumerate(zip(self.model, self.sources, strict=True)):
            inputs = [x if s == index - 1 else kept[s] for s in sources]  # layer 0 reads the image
            x = layer(inputs if len(inputs) > 1 else inputs[0])
            if index in self.kept:
                kept[index] = x
        return x
