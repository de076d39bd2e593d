"""Detection and recognition metrics: IoU, precision/recall, AP@0.5 and character error rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` x1y1x2y2 boxes, shape ``[N, M]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def centre_inside(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Whether each predicted box's centre lies inside each true box, ``[N, M]``."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 4)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    cx, cy = (predicted[:, 0] + predicted[:, 2]) / 2, (predicted[:, 1] + predicted[:, 3]) / 2
    inside_x = (cx[:, None] >= truth[None, :, 0]) & (cx[:, None] <= truth[None, :, 2])
    return inside_x & (cy[:, None] >= truth[None, :, 1]) & (cy[:, None] <= truth[None, :, 3])


def match_detections(
    predicted: np.ndarray,
    scores: np.ndarray,
    truth: np.ndarray,
    iou_threshold: float = 0.5,
    centre_counts: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by descending score, as in PASCAL VOC.

    With ``centre_counts`` a prediction whose centre lies inside a true box also matches it, whatever the IoU (a
    plate is found; how tightly it is boxed matters less): the real-photo criterion, with ``iou_threshold`` 0.3.
    Returns, for each prediction, whether it is a true positive, and for each ground-truth box the index of the
    prediction matched to it (-1 when missed).
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = box_iou(predicted, truth)
    if centre_counts:
        iou = np.where(centre_inside(predicted, truth) & (iou < iou_threshold), iou_threshold, iou)
    true_positive = np.zeros(len(order), dtype=bool)
    matched_prediction = np.full(len(truth), -1)
    for index in order:
        if iou.shape[1] == 0:
            break
        candidates = np.where(matched_prediction < 0, iou[index], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            true_positive[index] = True
            matched_prediction[best] = index
    return true_positive, matched_prediction


def average_precision(scores: Sequence[float], true_positive: Sequence[bool], num_truth: int) -> float:
    """Area under the precision envelope over recall (all-point interpolation, VOC 2010+)."""
    if num_truth == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(true_positive, dtype=np.float64)[order]
    cumulative_tp = np.cumsum(hits)
    recall = cumulative_tp / num_truth
    precision = cumulative_tp / np.arange(1, len(hits) + 1)
    recall = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 0.0]))
    precision = np.concatenate(([1.0], precision, [0.0]))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * envelope[1:]))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


@dataclass
class DetectionTally:
    """Accumulates detections over a data set for precision, recall and AP@0.5."""

    iou_threshold: float = 0.5
    centre_counts: bool = False

    def __post_init__(self) -> None:
        self.scores: list[float] = []
        self.hits: list[bool] = []
        self.num_truth = 0
        self.images = 0

    def add(self, predicted: np.ndarray, scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Count one image; returns the matched prediction index of each ground-truth box (-1 when missed)."""
        true_positive, matched = match_detections(predicted, scores, truth, self.iou_threshold, self.centre_counts)
        self.scores.extend(np.asarray(scores, dtype=float).tolist())
        self.hits.extend(true_positive.tolist())
        self.num_truth += len(truth)
        self.images += 1
        return matched

    def summary(self) -> dict[str, float]:
        found = int(np.sum(self.hits))
        return {
            "precision": found / max(1, len(self.hits)),
            "recall": found / max(1, self.num_truth),
            "map50": average_precision(self.scores, self.hits, self.num_truth),
            "predictions": len(self.hits),
            "plates": self.num_truth,
            "false_boxes_per_image": (len(self.hits) - found) / max(1, self.images),
        }
