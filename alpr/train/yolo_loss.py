"""The YOLOv5 v7.0 training objective (Jocher et al., ultralytics/yolov5), for the plate detector.

Each ground-truth box is assigned to the anchors whose shape ratio is within ``anchor_threshold`` and to the
grid cell of its centre plus the two nearest neighbouring cells; matched predictions are pulled towards the box
by a CIoU loss, objectness is regressed towards that IoU, and classes use BCE (skipped for one class).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU (Zheng et al. 2020) of matching rows of two ``[N, 4]`` xywh-centre box tensors."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    hull_w = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    hull_h = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    hull_diagonal_sq = hull_w**2 + hull_h**2 + eps
    centre_distance_sq = (x2 - x1) ** 2 + (y2 - y1) ** 2
    aspect = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return iou - (centre_distance_sq / hull_diagonal_sq + aspect * alpha)


class YOLOv5Loss(nn.Module):
    """Box, objectness and class losses of YOLOv5 v7.0 for the raw maps of ``YOLOv5`` in training mode."""

    anchors: torch.Tensor  # buffer registered in __init__ (nn.Module types attributes as ``Tensor | Module``)

    def __init__(
        self,
        anchors: torch.Tensor,
        strides: torch.Tensor,
        num_classes: int,
        image_size: int = 640,
        anchor_threshold: float = 4.0,
        box_gain: float = 0.05,
        obj_gain: float = 1.0,
        cls_gain: float = 0.5,
    ) -> None:
        """``anchors``: ``[layers, anchors, 2]`` in units of each layer's stride (as ultralytics stores them)."""
        super().__init__()
        self.register_buffer("anchors", anchors.detach().clone().float())
        self.strides = strides.tolist()
        self.num_classes = num_classes
        self.num_layers, self.num_anchors = anchors.shape[:2]
        self.anchor_threshold = anchor_threshold
        self.layer_balance = [4.0, 1.0, 0.4] if self.num_layers == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
        layer_scale = 3 / self.num_layers
        self.box_gain = box_gain * layer_scale
        self.obj_gain = obj_gain * (image_size / 640) ** 2 * layer_scale
        self.cls_gain = cls_gain * num_classes / 80 * layer_scale
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, predictions: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a batch; ``targets`` rows are ``(image index, class, cx, cy, w, h)`` in input pixels."""
        device = predictions[0].device
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for layer, prediction in enumerate(predictions):
            image_idx, anchor_idx, grid_y, grid_x, target_box, target_cls = self._assign(layer, prediction, targets)
            objectness_target = torch.zeros(prediction.shape[:4], dtype=prediction.dtype, device=device)
            if len(image_idx):
                matched = prediction[image_idx, anchor_idx, grid_y, grid_x]
                xy = matched[:, :2].sigmoid() * 2 - 0.5
                wh = (matched[:, 2:4].sigmoid() * 2) ** 2 * self.anchors[layer][anchor_idx]
                ciou = bbox_ciou(torch.cat((xy, wh), 1), target_box)
                box_loss = box_loss + (1.0 - ciou).mean()
                objectness_target[image_idx, anchor_idx, grid_y, grid_x] = ciou.detach().clamp(0).to(prediction.dtype)
                if self.num_classes > 1:
                    class_target = torch.zeros_like(matched[:, 5:])
                    class_target[torch.arange(len(target_cls)), target_cls] = 1.0
                    cls_loss = cls_loss + self.bce(matched[:, 5:], class_target)
            obj_loss = obj_loss + self.bce(prediction[..., 4], objectness_target) * self.layer_balance[layer]
        batch_size = predictions[0].shape[0]
        box_loss, obj_loss, cls_loss = box_loss * self.box_gain, obj_loss * self.obj_gain, cls_loss * self.cls_gain
        total = (box_loss + obj_loss + cls_loss) * batch_size
        parts = {name: float(part.detach()) for name, part in (("box", box_loss), ("obj", obj_loss), ("cls", cls_loss))}
        return total, parts

    def _assign(self, layer: int, prediction: torch.Tensor, targets: torch.Tensor):
        """Targets of one layer: matched indices and boxes relative to their cells, in grid units."""
        _, _, grid_h, grid_w, _ = prediction.shape
        device = prediction.device
        anchors = self.anchors[layer]
        num_targets = targets.shape[0]
        if num_targets == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, empty, empty, torch.zeros(0, 4, device=device), empty
        # Targets in grid units, repeated for each anchor: [anchors, targets, 7] with the anchor index last.
        scaled = targets.clone()
        scaled[:, 2:6] /= self.strides[layer]
        anchor_column = torch.arange(self.num_anchors, device=device).float().view(-1, 1).repeat(1, num_targets)
        candidates = torch.cat((scaled.repeat(self.num_anchors, 1, 1), anchor_column[..., None]), 2)
        ratio = candidates[..., 4:6] / anchors[:, None]
        candidates = candidates[torch.max(ratio, 1 / ratio).max(2)[0] < self.anchor_threshold]

        # The centre cell and the two neighbouring cells nearest to the centre.
        centre = candidates[:, 2:4]
        centre_inverse = torch.tensor([grid_w, grid_h], device=device) - centre
        near_left, near_top = ((centre % 1 < 0.5) & (centre > 1)).T
        near_right, near_bottom = ((centre_inverse % 1 < 0.5) & (centre_inverse > 1)).T
        selection = torch.stack((torch.ones_like(near_left), near_left, near_top, near_right, near_bottom))
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * 0.5
        candidates = candidates.repeat((5, 1, 1))[selection]
        cell_offsets = (torch.zeros_like(centre)[None] + offsets[:, None])[selection]

        image_idx, target_cls = candidates[:, 0].long(), candidates[:, 1].long()
        centre, size, anchor_idx = candidates[:, 2:4], candidates[:, 4:6], candidates[:, 6].long()
        cell = (centre - cell_offsets).long()
        grid_x = cell[:, 0].clamp_(0, grid_w - 1)
        grid_y = cell[:, 1].clamp_(0, grid_h - 1)
        target_box = torch.cat((centre - cell, size), 1)
        return image_idx, anchor_idx, grid_y, grid_x, target_box, target_cls
