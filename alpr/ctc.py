"""Greedy CTC decoding of LPRNet logits, in NumPy only (the Triton decoder step runs without PyTorch).

Logits are ``[B, classes, steps]`` (``[B, 23, 18]`` for LPRNet): class scores per time step, blank ``-`` at index 22.
Every function accepts zero rows.
"""

from __future__ import annotations

import numpy as np

from alpr.vocab import BLANK_INDEX, CHARS


def greedy_path(logits: np.ndarray) -> np.ndarray:
    """The most likely class at every step: ``[B, steps]``."""
    return np.asarray(logits).argmax(axis=1)


def collapse(path: np.ndarray, blank: int = BLANK_INDEX) -> list[list[int]]:
    """CTC collapse of ``[B, steps]`` class paths: merge runs of the same class, then drop blanks."""
    path = np.asarray(path)
    keep = path != blank
    keep[:, 1:] &= path[:, 1:] != path[:, :-1]
    return [row[mask].tolist() for row, mask in zip(path, keep, strict=True)]


def greedy_decode(logits: np.ndarray, chars: tuple[str, ...] = CHARS, blank: int = BLANK_INDEX) -> list[str]:
    """Texts read from ``[B, classes, steps]`` logits by greedy (best-path) CTC decoding."""
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[1] != len(chars):
        raise ValueError(f"expected logits [B, {len(chars)}, steps], got {list(logits.shape)}")
    symbols = np.asarray(chars)
    return ["".join(symbols[labels]) for labels in collapse(greedy_path(logits), blank)]


def path_confidence(logits: np.ndarray) -> np.ndarray:
    """Plate confidence: the probability of the greedy path, ``[B]`` float32 in [0, 1].

    Definition: the product over all time steps of the largest softmax probability (softmax over classes) at that
    step, i.e. the probability the network gives to its single best frame-level path, blanks included. It is a lower
    bound on the probability of the decoded text, to which other frame-level paths collapse as well.
    """
    logits = np.asarray(logits, dtype=np.float64)
    # The largest softmax probability is 1 / sum(exp(l - max l)); the product over steps is summed in log space.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_best = -np.log(np.exp(shifted).sum(axis=1))
    return np.exp(log_best.sum(axis=1)).astype(np.float32)


def decode_with_confidence(logits: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``greedy_decode`` and ``path_confidence`` of the same logits."""
    return greedy_decode(logits), path_confidence(logits)


def decode_plates(
    logits: np.ndarray, plate_boxes: np.ndarray, plate_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``ctc_decoder`` step: boxes, detector scores, texts (bytes) and text scores of the real plates.

    The M input rows are the crops of one image; rows whose ``plate_scores`` is 0 are the padding that the crop step
    emits for an image without detections, and are dropped, so N <= M rows come out (N = 0 without plates).
    """
    rows = len(logits)
    if len(plate_boxes) != rows or len(plate_scores) != rows:
        raise ValueError(
            "logits, plate_boxes and plate_scores disagree on the number of rows "
            f"({rows}, {len(plate_boxes)}, {len(plate_scores)})"
        )
    real = np.asarray(plate_scores) > 0
    texts, text_scores = decode_with_confidence(np.asarray(logits)[real])
    return (
        np.ascontiguousarray(plate_boxes[real], dtype=np.float32).reshape(-1, 4),
        np.ascontiguousarray(plate_scores[real], dtype=np.float32),
        np.array([text.encode() for text in texts], dtype=np.object_),
        np.ascontiguousarray(text_scores, dtype=np.float32),
    )
