"""Spatial transformer (Jaderberg et al. 2015) that straightens 24x94 plate crops before LPRNet.

A small localisation network regresses the six parameters of an affine map; the crop is resampled through it
(bilinear, zeros outside). The regressor starts at the identity. Coordinates follow ``align_corners=True``, as the
published weights were trained with: -1 and +1 are the centres of the corner pixels.

The sampling grid is ``F.affine_grid`` written out as one matrix product with a constant grid of output
coordinates, because the ONNX ``AffineGrid`` operator (opset 20) is not supported by TensorRT while ``MatMul`` and
``GridSample`` (opset 16) are.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from alpr.spec import CROP_HEIGHT, CROP_WIDTH

# Localisation features of a 24x94 crop: 32 channels of 2x14.
_LOCALISATION_FEATURES = 32 * 2 * 14


def output_coordinates(height: int, width: int) -> torch.Tensor:
    """``[height * width, 3]`` homogeneous output coordinates ``(x, y, 1)``, -1 and +1 at the corner pixel centres."""
    grid_y, grid_x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack((grid_x, grid_y, torch.ones_like(grid_x)), -1).view(-1, 3)


class STN(nn.Module):
    """Affine spatial transformer: ``[B, 3, 24, 94] -> [B, 3, 24, 94]``."""

    output_grid: torch.Tensor  # buffer registered in __init__ (nn.Module types attributes as ``Tensor | Module``)

    def __init__(self) -> None:
        super().__init__()
        self.localization = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3),  # 22 x 92
            nn.MaxPool2d(kernel_size=2, stride=2),  # 11 x 46
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=5),  # 7 x 42
            nn.MaxPool2d(kernel_size=3, stride=3),  # 2 x 14
            nn.ReLU(inplace=True),
        )
        self.fc_loc = nn.Sequential(
            nn.Linear(_LOCALISATION_FEATURES, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, 6),
        )
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        regressor = cast(nn.Linear, self.fc_loc[2])
        with torch.no_grad():
            regressor.weight.zero_()
            regressor.bias.copy_(identity)
        self.register_buffer("output_grid", output_coordinates(CROP_HEIGHT, CROP_WIDTH), persistent=False)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, 2, 3]`` affine maps (output -> input, normalised coordinates) predicted for crops ``x``."""
        features = self.localization(x).flatten(1)
        return self.fc_loc(features).view(-1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Straightened crops, same shape as ``x``."""
        theta = self.affine(x)
        grid = torch.matmul(self.output_grid, theta.transpose(1, 2)).view(-1, CROP_HEIGHT, CROP_WIDTH, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
