"""The served detector graph: YOLOv5 followed by non-maximum suppression, padded to a fixed top-K per image.

    images     uint8   [B, 3, 640, 640]  letterboxed RGB
    num_dets   int32   [B, 1]            detections kept for each image (at most K)
    det_boxes  float32 [B, K, 4]         x1, y1, x2, y2 in letterbox pixels, sorted by score; padding rows are 0
    det_scores float32 [B, K]            objectness x class probability (best class), sorted descending

Suppression is the standard ONNX ``NonMaxSuppression`` operator, so onnxruntime runs the graph and TensorRT parses
it. Its output, ``[S, 3]`` rows of (image, class, box), depends on the data and mixes the images of a batch; it is
scattered back into a keep mask ``[B, N]`` and each image takes its own top-K of the kept scores, so an image's
detections do not depend on the batch it was sent with, which dynamic batching needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from alpr import spec

if TYPE_CHECKING:

    class _SymbolicGraph(Protocol):
        """What the ONNX exporter passes a ``symbolic`` as ``g``: torch's private ``GraphContext``, whose ``op`` adds
        a node (``torch.Graph`` as typed has no ``op``)."""

        def op(self, opname: str, *raw_args: Tensor | torch.Value, **kwargs: Any) -> torch.Value: ...


# Candidates per image entering suppression: the best-scoring boxes only, as YOLOv5's own NMS caps its input.
PRE_NMS_TOP_K = 1000


def suppression_matrix(boxes: Tensor, iou_threshold: float) -> Tensor:
    """``[N, N]`` bool: whether box i, once kept, suppresses box j, as ONNX Runtime decides it (float32).

    Boxes are corner pairs in any order; a pair suppresses when their intersection over union exceeds the threshold,
    and never when the intersection, either area or the union is not positive.
    """
    boxes = boxes.to(torch.float32)
    low = torch.minimum(boxes[:, :2], boxes[:, 2:])
    high = torch.maximum(boxes[:, :2], boxes[:, 2:])
    extent = torch.clamp(torch.minimum(high[:, None], high[None]) - torch.maximum(low[:, None], low[None]), min=0)
    intersection = extent[..., 0] * extent[..., 1]
    area = (high - low).prod(-1)
    union = area[:, None] + area[None] - intersection
    positive = (intersection > 0) & (area[:, None] > 0) & (area[None] > 0) & (union > 0)
    return positive & (intersection / union > iou_threshold)


def non_max_suppression(
    boxes: Tensor, scores: Tensor, max_output_boxes_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    """Greedy NMS with the semantics of the ONNX ``NonMaxSuppression`` operator (``center_point_box = 0``).

    ``boxes`` ``[B, N, 4]``, ``scores`` ``[B, C, N]``. For each image and class, boxes scoring above
    ``score_threshold`` are visited by descending score (ties: lower index first) and kept unless a kept box
    suppresses them, until ``max_output_boxes_per_class`` are kept. Returns int64 ``[S, 3]`` rows of
    (image, class, box index), grouped by image then class, in selection order.
    """
    selected: list[tuple[int, int, int]] = []
    for image in range(scores.shape[0]):
        for cls in range(scores.shape[1]):
            class_scores = scores[image, cls]
            candidates = torch.nonzero(class_scores > score_threshold).squeeze(1)
            order = candidates[torch.argsort(class_scores[candidates], descending=True, stable=True)]
            suppresses = suppression_matrix(boxes[image, order], iou_threshold).cpu().numpy()
            suppressed = np.zeros(len(order), dtype=bool)
            kept: list[int] = []
            for position in range(len(order)):
                if len(kept) == max_output_boxes_per_class:
                    break
                if not suppressed[position]:
                    kept.append(position)
                    suppressed |= suppresses[position]
            selected.extend((image, cls, int(order[position])) for position in kept)
    return torch.tensor(selected, dtype=torch.int64, device=boxes.device).reshape(-1, 3)


class NonMaxSuppression(torch.autograd.Function):
    """``non_max_suppression`` in eager mode; the ONNX ``NonMaxSuppression`` operator when exported."""

    @staticmethod
    def forward(
        ctx: object,
        boxes: Tensor,
        scores: Tensor,
        max_output_boxes_per_class: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> Tensor:
        return non_max_suppression(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(
        g: _SymbolicGraph,
        boxes: torch.Value,
        scores: torch.Value,
        max_output_boxes_per_class: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> torch.Value:
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_output_boxes_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=0,
        )


class DetectorWithNMS(nn.Module):
    """YOLOv5 (eval mode: decoded ``[B, N, 5 + classes]``) plus class-agnostic NMS padded to ``max_detections``."""

    def __init__(
        self,
        yolo: nn.Module,
        max_detections: int = spec.MAX_PLATES,
        confidence: float = spec.DETECTOR_CONFIDENCE,
        iou: float = spec.DETECTOR_IOU,
        pre_nms_top_k: int = PRE_NMS_TOP_K,
    ) -> None:
        super().__init__()
        self.yolo = yolo
        self.max_detections = max_detections
        self.confidence = confidence
        self.iou = iou
        self.pre_nms_top_k = pre_nms_top_k

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        predictions = self.yolo(images.to(torch.float32) / 255)
        centre, size = predictions[..., 0:2], predictions[..., 2:4]
        boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
        # One class: objectness x its probability; several: the best class, as class-agnostic NMS wants.
        scores = predictions[..., 4] * predictions[..., 5:].amax(-1)

        top_scores, top_index = scores.topk(min(self.pre_nms_top_k, scores.shape[1]), dim=1)
        top_boxes = boxes.gather(1, top_index.unsqueeze(-1).expand(-1, -1, 4))
        selected = NonMaxSuppression.apply(
            top_boxes, top_scores.unsqueeze(1), self.max_detections, self.iou, self.confidence
        )
        # Scatter the selection, which mixes images, back per image: keep[b, n] = 1 for every selected (b, n).
        keep = torch.zeros_like(top_scores).index_put(
            (selected[:, 0], selected[:, 2]), torch.ones_like(selected[:, 0], dtype=top_scores.dtype)
        )
        det_scores, order = (top_scores * keep).topk(self.max_detections, dim=1)
        num_dets = keep.sum(1, keepdim=True).to(torch.int32)
        valid = torch.arange(self.max_detections, device=images.device) < num_dets
        det_boxes = top_boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        return num_dets, torch.where(valid.unsqueeze(-1), det_boxes, 0.0), torch.where(valid, det_scores, 0.0)
