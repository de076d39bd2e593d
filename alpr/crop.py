"""The ``crop`` step: the detector's views -> one image's plates, cropped for the recogniser (see ``alpr.geometry``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alpr import spec
from alpr.geometry import as_float, crop_plates, image_size, merged_plates


class Crop(nn.Module):
    """The ``crop`` step: the views' detections -> recogniser crops, boxes and scores of the image.

    Inputs: image uint8 ``[H, W, 3]``, for each of the V views num_dets int32 ``[V, 1]``, det_boxes float32
    ``[V, K, 4]`` (its canvas pixels), det_scores float32 ``[V, K]``. The views are merged into at most K plates.
    Outputs: crops ``[M, 3, 24, 94]``, plate_boxes ``[M, 4]`` (original pixels, clipped to the image), plate_scores
    ``[M]``, sorted by score, with M = max(plates, 1): an image without plates yields one padding row of zeros, so
    that every later step receives a batch of at least one.
    """

    def __init__(self, grid: int = spec.TILE_GRID) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, image: Tensor, num_dets: Tensor, det_boxes: Tensor, det_scores: Tensor) -> tuple[Tensor, ...]:
        pixels = as_float(image)
        height, width = image_size(pixels)
        count, boxes, scores = merged_plates(num_dets, det_boxes, det_scores, height, width, self.grid)
        # A 0-d tensor end keeps the row count dynamic in the exported graph; torch's stubs only admit numbers.
        rows = torch.arange(  # type: ignore[call-overload]
            torch.clamp(count, min=1), dtype=torch.int64, device=image.device
        )
        valid = rows < count
        limits = torch.stack([width, height, width, height]).to(torch.float32)
        boxes = torch.where(
            valid.unsqueeze(1), torch.minimum(torch.clamp(boxes.index_select(0, rows), min=0.0), limits), 0.0
        )
        crops = torch.where(valid.reshape(-1, 1, 1, 1), crop_plates(pixels, boxes), 0.0)
        return crops, boxes, torch.where(valid, scores.index_select(0, rows), 0.0)
