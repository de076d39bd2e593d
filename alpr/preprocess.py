"""The ``preprocess`` step: one BGR image -> the detector's letterboxed views (see ``alpr.geometry``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alpr import spec
from alpr.geometry import (
    as_float,
    image_size,
    image_view_windows,
    letterbox_transform,
    pixel_centres,
    sample_bilinear,
    scaled_side,
)


class Preprocess(nn.Module):
    """The ``preprocess`` step: BGR uint8 ``[H, W, 3]`` -> letterboxed RGB uint8 views ``[V, 3, 640, 640]``, V by
    ``spec.image_views`` (the whole image alone when it fits the canvas).

    ``grid`` 1 gives the whole image alone, which is what the detector is trained on: training and serving see
    identical pixels. The CPU targets serve the same views drawn by OpenCV (``alpr.views.letterbox_views``).
    """

    def __init__(self, grid: int = spec.TILE_GRID) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, image: Tensor) -> Tensor:
        pixels = as_float(image)
        height, width = image_size(pixels)
        x0, y0, x1, y1 = image_view_windows(height, width, self.grid).unsqueeze(-1).unbind(1)  # each [V, 1]
        r, pad_x, pad_y = letterbox_transform(y1 - y0, x1 - x0)
        centres = pixel_centres(spec.DETECTOR_SIZE, image.device)
        # Canvas pixels whose centre falls on the scaled window take its samples; the rest are the fill.
        inside_x = (centres >= pad_x) & (centres < pad_x + scaled_side(x1 - x0, r))  # [V, 640]
        inside_y = (centres >= pad_y) & (centres < pad_y + scaled_side(y1 - y0, r))
        # Each view samples its own window, borders replicated: what cv2.resize does to the window alone.
        source_x = torch.minimum(torch.maximum(x0 + (centres - pad_x) / r - 0.5, x0), x1 - 1)
        source_y = torch.minimum(torch.maximum(y0 + (centres - pad_y) / r - 0.5, y0), y1 - 1)
        views = source_x.shape[0]
        rgb = torch.arange(2, -1, -1, device=image.device)  # the BGR planes 2, 1, 0 in RGB order
        samples = sample_bilinear(
            pixels,
            source_y.reshape(views, 1, -1, 1),
            source_x.reshape(views, 1, 1, -1),
            rgb.reshape(1, 3, 1, 1),
        )
        inside = inside_y.reshape(views, 1, -1, 1) & inside_x.reshape(views, 1, 1, -1)
        canvas = torch.where(inside, torch.round(samples), float(spec.LETTERBOX_FILL))
        return canvas.to(torch.uint8)
