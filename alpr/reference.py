"""NumPy/OpenCV references of the ``preprocess`` and ``crop`` steps: independent float64 implementations, for the
tests and the export's verification."""

from __future__ import annotations

import math

import numpy as np

from alpr import spec
from alpr.geometry import letterbox_transform, view_windows
from alpr.views import letterbox_layout


def _bilinear_numpy(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Float64 bilinear samples of an HWC image at pixel-index grids ``y`` ``[A, 1]`` and ``x`` ``[1, B]``, borders
    replicated."""
    height, width = image.shape[:2]
    y = np.clip(y, 0, height - 1)
    x = np.clip(x, 0, width - 1)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    y1 = np.minimum(y0 + 1, height - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    wy = (y - y0)[..., None]
    wx = (x - x0)[..., None]
    pixels = image.astype(np.float64)
    top = pixels[y0, x0] * (1 - wx) + pixels[y0, x1] * wx
    bottom = pixels[y1, x0] * (1 - wx) + pixels[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _windows_numpy(height: int, width: int, grid: int) -> list[tuple[np.float32, ...]]:
    """The windows of the views the image gets: every tile's (``view_windows``), the tiles only for a large image."""
    windows = view_windows(height, width, grid).tolist()[: spec.image_views(height, width, grid)]
    return [tuple(np.float32(v) for v in window) for window in windows]


def preprocess_reference(image: np.ndarray, grid: int = spec.TILE_GRID) -> np.ndarray:
    """NumPy reference of ``Preprocess``: explicit float64 bilinear sampling of each window alone; uint8
    ``[V, 3, 640, 640]`` RGB."""
    views = []
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in _windows_numpy(height, width, grid):
        window = image[int(y0) : int(y1), int(x0) : int(x1)]
        r, pad_x, pad_y, rows, cols = letterbox_layout(y1 - y0, x1 - x0)
        centres = np.arange(spec.DETECTOR_SIZE, dtype=np.float64) + 0.5
        inside_x = (centres >= pad_x) & (centres < pad_x + cols)
        inside_y = (centres >= pad_y) & (centres < pad_y + rows)
        source_y = (centres - pad_y) / r - 0.5
        source_x = (centres - pad_x) / r - 0.5
        samples = _bilinear_numpy(window, source_y[:, None], source_x[None, :])
        canvas = np.full_like(samples, spec.LETTERBOX_FILL)
        inside = inside_y[:, None] & inside_x[None, :]
        canvas[inside] = np.round(samples[inside])
        views.append(canvas[..., ::-1].astype(np.uint8).transpose(2, 0, 1))
    return np.stack(views)


def _area_matrix_numpy(start: float, extent: float, count: int, size: int) -> np.ndarray:
    """Float64 ``[count, size]`` weights of the area resampling of one axis (see ``area_taps``), as a dense matrix:
    each row the overlap of a window with every pixel, replicated borders folded onto the edge pixels."""
    scale = extent / count
    half = max(scale, 1.0) / 2
    centres = start + (np.arange(count) + 0.5) * scale
    # Pixels from far outside the image (replicated borders) down to far past its end.
    pixels = np.arange(math.floor(centres.min() - half) - 1, math.ceil(centres.max() + half) + 2)
    overlap = np.minimum(pixels[None] + 1, centres[:, None] + half) - np.maximum(pixels[None], centres[:, None] - half)
    weights = np.clip(overlap, 0, None)
    # A window wider than the graph's taps keeps its central CROP_TAPS pixels, as the graph does.
    spare = max(math.ceil(2 * half) + 1 - spec.CROP_TAPS, 0)
    first = np.floor(centres - half + spare // 2)[:, None]
    weights[(pixels[None] < first) | (pixels[None] >= first + spec.CROP_TAPS)] = 0
    matrix = np.zeros((count, size))
    np.add.at(matrix.T, np.clip(pixels, 0, size - 1), weights.T)
    return matrix / matrix.sum(1, keepdims=True)


def crop_reference(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """NumPy reference of ``crop_plates`` for ``boxes`` ``[M, 4]`` in original pixels: float32 ``[M, 3, 24, 94]``.

    Dense resampling matrices per axis, built from the windows' overlaps with every pixel.
    """
    crops = []
    height, width = image.shape[:2]
    pixels = image.astype(np.float64)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64):
        margin = spec.CROP_MARGIN * (y2 - y1)
        rows = _area_matrix_numpy(y1 - margin, y2 - y1 + 2 * margin, spec.CROP_HEIGHT, height)
        cols = _area_matrix_numpy(x1, x2 - x1, spec.CROP_WIDTH, width)
        samples = np.einsum("ah,hwc,bw->cab", rows, pixels, cols)
        crops.append((samples - spec.PLATE_MEAN) * spec.PLATE_SCALE)
    return (
        np.stack(crops).astype(np.float32) if crops else np.zeros((0, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH), np.float32)
    )


def crop_step_reference(
    image: np.ndarray, num_dets: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, grid: int = spec.TILE_GRID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of ``Crop`` on the same inputs: crops, plate_boxes, plate_scores."""
    from alpr.metrics import box_iou

    height, width = image.shape[:2]
    max_plates = det_scores.shape[1]
    candidates: list[tuple[float, np.ndarray]] = []
    whole_view_scale = letterbox_transform(height, width)[0]
    windows = _windows_numpy(height, width, grid)
    for view, (x0, y0, x1, y1) in enumerate(windows):
        r, pad_x, pad_y = letterbox_transform(y1 - y0, x1 - x0)
        edge = spec.TILE_EDGE / r
        if view > 0:
            threshold = spec.TILE_CONFIDENCE
        else:
            threshold = spec.WHOLE_VIEW_CONFIDENCE if len(windows) > 1 else spec.SINGLE_VIEW_CONFIDENCE
        for row in range(int(num_dets[view, 0])):
            if det_scores[view, row] < np.float32(threshold):  # compared in float32, as in the graph
                continue
            box = (np.asarray(det_boxes[view, row], np.float64) - [pad_x, pad_y, pad_x, pad_y]) / r
            box += [x0, y0, x0, y0]
            if view > 0:
                if (box[2] - box[0]) * whole_view_scale >= spec.TILE_MAX_PLATE:
                    continue
                inner = (x0 > 0 and box[0] <= x0 + edge, y0 > 0 and box[1] <= y0 + edge,
                         x1 < width and box[2] >= x1 - edge, y1 < height and box[3] >= y1 - edge)  # fmt: skip
                if any(inner):
                    continue
            candidates.append((float(det_scores[view, row]), box))
    candidates.sort(key=lambda candidate: -candidate[0])
    kept: list[tuple[float, np.ndarray]] = []
    for index, (score, box) in enumerate(candidates):
        better = np.array([other for _, other in candidates[:index]]).reshape(-1, 4)
        if score > 0 and not (box_iou(better, box[None]) > spec.DETECTOR_IOU).any():
            kept.append((score, box))
    kept = kept[:max_plates]
    rows = max(len(kept), 1)
    boxes = np.zeros((rows, 4))
    scores = np.zeros(rows)
    for row, (score, box) in enumerate(kept):
        boxes[row] = np.clip(box, 0, [width, height, width, height])
        scores[row] = score
    crops = crop_reference(image, boxes)
    crops[len(kept) :] = 0
    return crops, boxes.astype(np.float32), scores.astype(np.float32)
