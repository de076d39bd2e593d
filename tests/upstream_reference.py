"""The upstream LPRNet and STN forward passes (EtokonE/License_Plate_Recognition), kept to check ours against them.

Upstream runs its max-pools as ``nn.MaxPool3d`` on 4-D tensors and divides every global-context map by the mean of
its squares over the whole batch. This module reproduces exactly that on the layers of an ``alpr`` LPRNet, so tests
can compare the two forward passes with the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alpr.models import STN, LPRNet

# Backbone indices of upstream's nn.MaxPool3d layers, with their exact arguments.
UPSTREAM_MAX_POOLS = {
    3: nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 1, 1)),
    7: nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(2, 1, 2)),
    14: nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(4, 1, 2)),
}
UPSTREAM_TAPS = (2, 6, 13, 22)


@torch.no_grad()
def upstream_lprnet_forward(model: LPRNet, x: torch.Tensor) -> torch.Tensor:
    """Upstream's logits ``[B, classes, 18]`` for crops ``x``, using the weights of ``model``."""
    taps = []
    for index, layer in enumerate(model.backbone):
        x = UPSTREAM_MAX_POOLS.get(index, layer)(x)
        if index in UPSTREAM_TAPS:
            taps.append(x)
    context = []
    for tap, feature_map in enumerate(taps):
        if tap in (0, 1):
            feature_map = nn.AvgPool2d(kernel_size=5, stride=5)(feature_map)
        if tap == 2:
            feature_map = nn.AvgPool2d(kernel_size=(4, 10), stride=(4, 2))(feature_map)
        feature_map = feature_map / torch.mean(torch.pow(feature_map, 2))  # one mean over the whole batch
        context.append(feature_map)
    return torch.mean(model.container(torch.cat(context, 1)), dim=2)


@torch.no_grad()
def upstream_stn_forward(model: STN, x: torch.Tensor) -> torch.Tensor:
    """Upstream's spatial transformer output for crops ``x`` (``F.affine_grid`` then ``F.grid_sample``)."""
    theta = model.fc_loc(model.localization(x).view(-1, 32 * 14 * 2)).view(-1, 2, 3)
    grid = F.affine_grid(theta, x.size(), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)
