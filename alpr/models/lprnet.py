"""LPRNet (Zherzdev & Gruzdev 2018, "LPRNet: License Plate Recognition via Deep Neural Networks").

The layer layout follows the public Russian-plate implementation whose weights we use, so that its
``net_state_dict`` loads strictly: a backbone ``nn.Sequential`` of small basic blocks, four feature maps tapped
from it for the global context, and a 1x1 "container" convolution that mixes them into per-column class scores.

Input: ``[B, 3, 24, 94]`` crops normalised as ``(x - 127.5) / 128``. Output: logits ``[B, classes, 18]``, one
column per CTC time step.

One deliberate difference from that implementation: each global-context map is divided by the mean of its squares
over (C, H, W) of the same crop, not over the whole batch, so a crop's logits do not depend on the other crops it is
batched with. At batch size 1 both are the same computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alpr.vocab import NUM_CLASSES

# Backbone indices whose outputs feed the global context, and the average pooling that brings each to 4x18.
_TAP_POOLING: dict[int, tuple[tuple[int, int], tuple[int, int]] | None] = {
    2: ((5, 5), (5, 5)),  # 64 x 22 x 92  -> 4 x 18
    6: ((5, 5), (5, 5)),  # 128 x 20 x 90 -> 4 x 18
    13: ((4, 10), (4, 2)),  # 256 x 18 x 44 -> 4 x 18
    22: None,  # classes x 4 x 18
}


class SmallBasicBlock(nn.Module):
    """The paper's small basic block: 1x1 squeeze to a quarter, 3x1 and 1x3 convolutions, 1x1 expansion."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        squeezed = out_channels // 4
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, squeezed, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(squeezed, squeezed, kernel_size=(3, 1), padding=(1, 0)),
            nn.ReLU(),
            nn.Conv2d(squeezed, squeezed, kernel_size=(1, 3), padding=(0, 1)),
            nn.ReLU(),
            nn.Conv2d(squeezed, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ChannelSubsamplingMaxPool(nn.Module):
    """Keep every ``channel_stride``-th channel, then 3x3 max pooling with stride ``(1, width_stride)``.

    This is what the reference implementation's ``nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(c, 1, w))`` computes
    when given a 4-D ``[B, C, H, W]`` tensor (it reads it as one unbatched ``[C', D, H, W]`` volume with the channels
    as depth), written with 2-D operators that every ONNX and TensorRT version supports.
    """

    def __init__(self, channel_stride: int, width_stride: int) -> None:
        super().__init__()
        self.channel_stride = channel_stride
        self.width_stride = width_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x[:, :: self.channel_stride], kernel_size=3, stride=(1, self.width_stride))


class LPRNet(nn.Module):
    """LPRNet for 24x94 crops; ``num_classes`` includes the CTC blank."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3),  # 0
            nn.BatchNorm2d(64),
            nn.ReLU(),  # 2: tap
            ChannelSubsamplingMaxPool(channel_stride=1, width_stride=1),
            SmallBasicBlock(64, 128),  # 4
            nn.BatchNorm2d(128),
            nn.ReLU(),  # 6: tap
            ChannelSubsamplingMaxPool(channel_stride=2, width_stride=2),
            SmallBasicBlock(64, 256),  # 8
            nn.BatchNorm2d(256),
            nn.ReLU(),
            SmallBasicBlock(256, 256),  # 11
            nn.BatchNorm2d(256),
            nn.ReLU(),  # 13: tap
            ChannelSubsamplingMaxPool(channel_stride=4, width_stride=2),
            nn.Dropout(dropout),
            nn.Conv2d(64, 256, kernel_size=(1, 4)),  # 16
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(256, num_classes, kernel_size=(13, 1)),  # 20
            nn.BatchNorm2d(num_classes),
            nn.ReLU(),  # 22: tap
        )
        context_channels = 64 + 128 + 256 + num_classes
        self.container = nn.Conv2d(context_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, 18]`` of crops ``[B, 3, 24, 94]``."""
        context = []
        for index, layer in enumerate(self.backbone):
            x = layer(x)
            if index in _TAP_POOLING:
                context.append(normalise_per_crop(_pool_tap(x, index)))
        mixed = self.container(torch.cat(context, 1))
        return mixed.mean(dim=2)


def _pool_tap(feature_map: torch.Tensor, index: int) -> torch.Tensor:
    pooling = _TAP_POOLING[index]
    if pooling is None:
        return feature_map
    kernel, stride = pooling
    return F.avg_pool2d(feature_map, kernel_size=kernel, stride=stride)


def normalise_per_crop(feature_map: torch.Tensor) -> torch.Tensor:
    """Divide each crop's map by the mean of its squares over (C, H, W)."""
    return feature_map / feature_map.pow(2).mean(dim=(1, 2, 3), keepdim=True)
