"""Geometry shared by the ``preprocess`` and ``crop`` steps, written in torch so that it exports to ONNX graphs.

The detector looks at V = 1 + G x G views of the original BGR image: the whole frame, then a G x G grid of
overlapping tiles (``spec.TILE_GRID``), which bring small plates to the detector at about G times the size; an image
that fits the 640 canvas gets the whole view alone (V = 1, ``spec.image_views``). Each
view's window is scaled by r = min(640 / h, 640 / w), keeping its aspect, centred on a 640x640 canvas filled with
grey 114 and flipped to RGB planes: the YOLOv5 letterbox (``alpr.preprocess``). The views' detections are mapped back
from their canvases to original pixels, tiles keep only the small plates they are there for, the views are merged by
suppression, and each kept box, grown by 20 % of its height above and below, is area-resampled to 24x94 from the
original-resolution image (``area_taps``: anti-aliased, as the published recogniser's training crops were;
``alpr.crop``).

The views resample bilinearly with the pixel-centre convention of ``cv2.resize``: output pixel u covers the continuous
interval [u, u + 1), its centre u + 0.5 maps through the affine transform to a continuous source position X, and the
window is sampled at pixel index X - 0.5 with its own borders replicated. Sampling gathers just the four neighbours of
every output pixel (one element-wise gather each), so its cost follows the output size; the only whole-image
operation is the cast of the uint8 input to float32, which comes first because TensorRT admits uint8 only at graph
boundaries.

Windows and paddings are whole pixels: the tile windows' corners are rounded, a window of w x h pixels scales by
r = min(640 / h, 640 / w) to round(w r) x round(h r) pixels, and these sit at pad = floor((640 - round(w r)) / 2). A
view is therefore exactly ``cv2.resize(window, fx=r, fy=r)`` pasted on the canvas, which is how the CPU targets draw
it (``alpr.views``, NumPy and OpenCV), while the GPU target runs this graph; a box maps back with r and the paddings,
without rounding. Independent NumPy references of both steps are in ``alpr.reference``.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from torch import Tensor
from torch.onnx import operators

from alpr import spec
from alpr.detector_graph import suppression_matrix
from alpr.views import letterbox_layout


# Python or NumPy sizes give floats, tensor sizes (either one) give tensors.
@overload
def letterbox_transform(height: float | np.floating, width: float | np.floating) -> tuple[float, float, float]: ...
@overload
def letterbox_transform(height: Tensor, width: float | np.floating | Tensor) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def letterbox_transform(height: float | np.floating, width: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...
def letterbox_transform(
    height: float | np.floating | Tensor, width: float | np.floating | Tensor
) -> tuple[Tensor, Tensor, Tensor] | tuple[float, float, float]:
    """Scale r and paddings (pad_x, pad_y) of the letterbox of an image of ``height`` x ``width`` pixels.

    A point (x, y) of the original image, in continuous pixel coordinates, lands at (x r + pad_x, y r + pad_y) on the
    detector canvas; the paddings are whole pixels. Evaluated in float32 with the same operations for Python sizes
    (returns floats, ``alpr.views.letterbox_layout``) and for tensor sizes (returns tensors, as inside an exported
    graph), so both agree to the bit.
    """
    if isinstance(height, Tensor) or isinstance(width, Tensor):
        size = float(spec.DETECTOR_SIZE)
        h, w = _float32_tensor(height), _float32_tensor(width)
        # A tensor numerator: PyTorch divides a Python number by a tensor as a reciprocal times the number, one
        # rounding more than the true division of ONNX Div and NumPy.
        canvas = torch.full_like(h, size)
        r = torch.minimum(canvas / h, canvas / w)
        return r, torch.floor((size - scaled_side(w, r)) / 2), torch.floor((size - scaled_side(h, r)) / 2)
    scale, pad_x, pad_y, _, _ = letterbox_layout(float(height), float(width))
    return scale, pad_x, pad_y


def scaled_side(side: Tensor, r: Tensor) -> Tensor:
    """Whole pixels a window side of ``side`` covers on the canvas at scale ``r``: round(side r), half to even."""
    return torch.round(side * r)


def _float32_tensor(value: float | np.floating | Tensor) -> Tensor:
    return value.to(torch.float32) if isinstance(value, Tensor) else torch.tensor(float(value))


def view_windows(height: int | Tensor, width: int | Tensor, grid: int = spec.TILE_GRID) -> Tensor:
    """Windows x0, y0, x1, y1 ``[spec.detector_views(grid), 4]`` (float32, original pixels) of the detector views.

    The first is the whole image; then, for ``grid`` > 1, the tiles row by row, each
    ``1 / (grid - (grid - 1) * overlap)`` of the image on either axis, neighbours overlapping by ``spec.TILE_OVERLAP``
    of a tile, the last one ending on the border; corners rounded to whole pixels (``alpr.views.window_corners``
    computes the same in NumPy).
    """
    h, w = _float32_tensor(height), _float32_tensor(width)
    zero = torch.zeros_like(w)
    windows = [torch.stack([zero, zero, w, h])]
    span = grid - (grid - 1) * spec.TILE_OVERLAP
    tiles = range(grid) if grid > 1 else range(0)
    for row in tiles:
        for col in tiles:
            x0, y0 = w * (col * (1 - spec.TILE_OVERLAP) / span), h * (row * (1 - spec.TILE_OVERLAP) / span)
            x1 = w if col == grid - 1 else torch.round(x0 + w / span)
            y1 = h if row == grid - 1 else torch.round(y0 + h / span)
            windows.append(torch.stack([torch.round(x0), torch.round(y0), x1, y1]))
    return torch.stack(windows)


def image_view_windows(height: Tensor, width: Tensor, grid: int = spec.TILE_GRID) -> Tensor:
    """The windows ``[V, 4]`` of the views an image of ``height`` x ``width`` (int64 scalars) gets: the whole image
    alone when its long side is at most ``spec.TILES_ABOVE_SIDE``, else also the tiles (``spec.image_views``).

    V is computed with integer max/min arithmetic on the sizes, so that it stays a shape value of the graph.
    """
    windows = view_windows(height, width, grid)
    tiles = windows.shape[0] - 1
    if not tiles:
        return windows
    excess = torch.maximum(height, width) - spec.TILES_ABOVE_SIDE
    tiled = torch.minimum(torch.maximum(excess, torch.zeros_like(excess)), torch.ones_like(excess))  # 1: tiles
    return windows.index_select(0, torch.arange(1 + tiles * tiled))  # type: ignore[call-overload]


def num_views(det_scores: Tensor) -> Tensor:
    """V, the views of one image, from a ``[V, K]`` detector output, as an int64 scalar that stays dynamic."""
    return operators.shape_as_tensor(det_scores)[0]


def image_size(image: Tensor) -> tuple[Tensor, Tensor]:
    """Height and width of an HWC image as int64 scalars that stay dynamic in an exported graph."""
    shape = operators.shape_as_tensor(image)
    return shape[0], shape[1]


def boxes_to_letterbox(boxes: Tensor, height: int | Tensor, width: int | Tensor) -> Tensor:
    """Map x1, y1, x2, y2 boxes ``[..., 4]`` from original-image pixels to detector-canvas pixels."""
    r, pad_x, pad_y = letterbox_transform(height, width)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1 * r + pad_x, y1 * r + pad_y, x2 * r + pad_x, y2 * r + pad_y], -1)


def boxes_from_letterbox(boxes: Tensor, height: int | Tensor, width: int | Tensor) -> Tensor:
    """Map x1, y1, x2, y2 boxes ``[..., 4]`` from detector-canvas pixels back to original-image pixels (sub-pixel)."""
    r, pad_x, pad_y = letterbox_transform(height, width)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 - pad_x) / r, (y1 - pad_y) / r, (x2 - pad_x) / r, (y2 - pad_y) / r], -1)


def sample_bilinear(image: Tensor, y: Tensor, x: Tensor, channel: Tensor) -> Tensor:
    """Bilinear samples of a float32 HWC image at pixel-index positions ``y``, ``x`` of channels ``channel``.

    ``y``, ``x`` (float) and ``channel`` (int64) broadcast to the shape of the result, so a caller lays the samples
    out directly, for instance planar ``[3, rows, cols]``. Pixel index i has its centre at continuous coordinate
    i + 0.5; borders are replicated.
    """
    height, width = image_size(image)
    flat = image.reshape(-1)
    y = torch.minimum(torch.clamp(y, min=0.0), (height - 1).to(torch.float32))
    x = torch.minimum(torch.clamp(x, min=0.0), (width - 1).to(torch.float32))
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    wy = y - y0
    wx = x - x0
    y0 = y0.to(torch.int64)
    x0 = x0.to(torch.int64)
    channels = image.shape[2]
    row0 = y0 * (width * channels)
    row1 = torch.minimum(y0 + 1, height - 1) * (width * channels)
    col0 = x0 * channels + channel
    col1 = torch.minimum(x0 + 1, width - 1) * channels + channel

    def pixels(row: Tensor, col: Tensor) -> Tensor:
        # One element-wise gather over the flat image (ONNX GatherElements), far faster than a row Gather.
        index = row + col
        return torch.gather(flat, 0, index.reshape(-1)).reshape(index.shape)

    top = pixels(row0, col0)
    top = top + (pixels(row0, col1) - top) * wx
    bottom = pixels(row1, col0)
    bottom = bottom + (pixels(row1, col1) - bottom) * wx
    return top + (bottom - top) * wy


def as_float(image: Tensor) -> Tensor:
    # The graphs cast the uint8 image before anything else reads it: TensorRT admits uint8 tensors only as graph
    # inputs and outputs that a Cast consumes or produces.
    return image.to(torch.float32)


def pixel_centres(count: int, device: torch.device) -> Tensor:
    return torch.arange(count, dtype=torch.float32, device=device) + 0.5


def area_taps(start: Tensor, extent: Tensor, count: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel indices and weights ``[M, count, CROP_TAPS]`` of an area resampling of ``count`` output pixels along one
    axis: the source span [start, start + extent) (continuous coordinates, ``[M]``) of an axis of ``size`` pixels.

    Output pixel u averages the source over a window centred on its footprint's centre, as wide as the footprint
    (extent / count source pixels) but at least one pixel: shrinking, that is ``cv2.INTER_AREA`` (no aliasing); on
    enlarging, a one-pixel window over pixels that are constant squares is exactly linear interpolation. Each pixel
    weighs the length of its overlap with the window. ``spec.CROP_TAPS`` pixels cover windows up to CROP_TAPS - 1
    wide; a wider one (a plate over seven times the crop size) keeps its central pixels, weights renormalised.
    Borders are replicated.
    """
    scale = (extent / count).unsqueeze(1)  # [M, 1] source pixels per output pixel
    centre = start.unsqueeze(1) + pixel_centres(count, start.device).unsqueeze(0) * scale  # [M, count]
    half = torch.clamp(scale, min=1.0) / 2
    # The first tap is the pixel holding the window's left end, moved right when the window has more pixels than taps.
    spare = torch.clamp(torch.ceil(2 * half) + 1 - spec.CROP_TAPS, min=0.0)
    first = torch.floor(centre - half + torch.floor(spare / 2))
    pixel = first.unsqueeze(-1) + torch.arange(spec.CROP_TAPS, dtype=torch.float32, device=start.device)
    overlap = torch.minimum(pixel + 1, (centre + half).unsqueeze(-1)) - torch.maximum(
        pixel, (centre - half).unsqueeze(-1)
    )
    weight = torch.clamp(overlap, min=0.0)
    weight = weight / weight.sum(-1, keepdim=True)
    last = (size - 1).to(torch.float32)
    index = torch.minimum(torch.clamp(pixel, min=0.0), last).to(torch.int64)
    return index, weight


def plate_box_of_crop(height: int, width: int) -> np.ndarray:
    """The box ``[1, 4]`` whose recogniser crop (grown by ``CROP_MARGIN`` above and below) is exactly a whole image of
    ``height`` x ``width``: for reading a plate that is already cropped."""
    plate_height = height / (1 + 2 * spec.CROP_MARGIN)
    top = spec.CROP_MARGIN * plate_height
    return np.array([[0.0, top, float(width), top + plate_height]], np.float32)


def crop_plates(image: Tensor | np.ndarray, boxes: Tensor | np.ndarray) -> Tensor:
    """Recogniser inputs ``[M, 3, 24, 94]`` for x1, y1, x2, y2 ``boxes`` ``[M, 4]`` in original-image pixels.

    The region is the box grown by ``CROP_MARGIN`` of its height above and below (none sideways), area-resampled
    (``area_taps``: anti-aliased like the ``cv2.INTER_AREA`` crops the published recogniser learnt from, where
    bilinear sampling would alias a large plate) from the BGR ``image`` ``[H, W, 3]`` (uint8, or its float32 values),
    kept BGR, normalised (x - 127.5) / 128, CHW. Used both by the served ``crop`` step and to prepare recogniser
    training data.
    """
    image = as_float(torch.from_numpy(image) if isinstance(image, np.ndarray) else image)
    if isinstance(boxes, np.ndarray):
        boxes = torch.from_numpy(boxes)
    x1, y1, x2, y2 = boxes.to(device=image.device, dtype=torch.float32).unbind(-1)
    margin = spec.CROP_MARGIN * (y2 - y1)
    height, width = image_size(image)
    rows, row_weights = area_taps(y1 - margin, y2 - y1 + 2 * margin, spec.CROP_HEIGHT, height)  # [M, 24, T]
    cols, col_weights = area_taps(x1, x2 - x1, spec.CROP_WIDTH, width)  # [M, 94, T]
    taps = spec.CROP_TAPS
    channels = image.shape[2]
    # One element-wise gather over the flat image (ONNX GatherElements): [M, 3, 24, T, 94, T].
    row_offsets = (rows * (width * channels)).reshape(-1, 1, spec.CROP_HEIGHT, taps, 1, 1)
    col_offsets = (cols * channels).reshape(-1, 1, 1, 1, spec.CROP_WIDTH, taps)
    bgr = torch.arange(3, device=image.device).reshape(1, 3, 1, 1, 1, 1)
    index = row_offsets + col_offsets + bgr
    pixels = torch.gather(image.reshape(-1), 0, index.reshape(-1)).reshape(index.shape)
    weights = row_weights.reshape(-1, 1, spec.CROP_HEIGHT, taps, 1, 1) * col_weights.reshape(
        -1, 1, 1, 1, spec.CROP_WIDTH, taps
    )
    samples = (pixels * weights).sum((3, 5))
    return (samples - spec.PLATE_MEAN) * spec.PLATE_SCALE


def merge_views(
    num_dets: Tensor,
    det_boxes: Tensor,
    det_scores: Tensor,
    height: Tensor,
    width: Tensor,
    grid: int = spec.TILE_GRID,
    thresholds: tuple[float, float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """The views' detections in original pixels, ``[V_max * K, 4]``, with scores ``[V_max * K]``, 0 where not kept
    (and for the views an image that fits the canvas does not get).

    The V views are those ``image_view_windows`` gives the image. A view's padding rows score 0, and so do boxes under
    the view's threshold (``thresholds``: the whole view alone, the whole view among tiles, a tile; default
    ``spec.view_thresholds()``) and a tile's boxes that it is not there for: those wider than
    ``spec.TILE_MAX_PLATE`` on the whole view's canvas, and those touching an inner edge of the tile.
    """
    views = num_views(det_scores)
    # A 0-d tensor end keeps V dynamic in the exported graph; torch's stubs only admit numbers.
    served = torch.arange(views)  # type: ignore[call-overload]
    x0, y0, x1, y1 = view_windows(height, width, grid).index_select(0, served).unsqueeze(-1).unbind(1)
    boxes = boxes_from_letterbox(det_boxes, y1 - y0, x1 - x0) + torch.stack([x0, y0, x0, y0], -1)
    bx1, by1, bx2, by2 = boxes.unbind(-1)  # each [V, K], original pixels
    r = letterbox_transform(y1 - y0, x1 - x0)[0]
    k = det_scores.shape[1]
    kept = torch.arange(k, device=det_scores.device) < num_dets.reshape(-1, 1)
    tile = (served > 0).reshape(-1, 1)
    whole_view_scale = r[0]
    small = (bx2 - bx1) * whole_view_scale < spec.TILE_MAX_PLATE
    edge = spec.TILE_EDGE / r
    image_width, image_height = x1[0], y1[0]
    clear_of_inner_edges = (
        ((x0 <= 0) | (bx1 > x0 + edge))
        & ((y0 <= 0) | (by1 > y0 + edge))
        & ((x1 >= image_width) | (bx2 < x1 - edge))
        & ((y1 >= image_height) | (by2 < y1 - edge))
    )
    alone_threshold, whole_view_threshold, tile_threshold = thresholds or spec.view_thresholds()
    whole_threshold = torch.where(tile.any(), whole_view_threshold, alone_threshold)
    confident = det_scores >= torch.where(tile, tile_threshold, whole_threshold)
    kept = kept & confident & (~tile | (small & clear_of_inner_edges))
    return _most_views(boxes.reshape(-1, 4), torch.where(kept, det_scores, 0.0).reshape(-1), grid, k)


def _most_views(boxes: Tensor, scores: Tensor, grid: int, k: int) -> tuple[Tensor, Tensor]:
    """``[V * K]`` rows padded to the static ``[V_max * K]`` of the most views (padding scored 0), so that what
    follows has fixed sizes (TensorRT's TopK needs a constant count)."""
    rows = torch.arange(spec.detector_views(grid) * k, device=scores.device)
    count = operators.shape_as_tensor(scores)[0]
    source = torch.minimum(rows, count - 1)
    return boxes.index_select(0, source), torch.where(rows < count, scores.index_select(0, source), 0.0)


def suppress_across_views(boxes: Tensor, scores: Tensor, max_plates: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best ``max_plates`` boxes after suppression: the number kept, boxes ``[max_plates, 4]`` and scores.

    A box is dropped when a better-scoring kept candidate overlaps it by more than ``spec.DETECTOR_IOU`` (the
    one-pass "fast NMS": plain tensor operations, since each view is already suppressed and few boxes remain).
    """
    scores, order = scores.topk(scores.shape[0])  # sorted descending (ONNX TopK)
    boxes = boxes.index_select(0, order)
    candidate = scores > 0
    earlier = torch.triu(torch.ones(len(scores), len(scores), dtype=torch.bool, device=scores.device), diagonal=1)
    suppressed = (suppression_matrix(boxes, spec.DETECTOR_IOU) & earlier & candidate.unsqueeze(1)).any(0)
    scores = torch.where(candidate & ~suppressed, scores, 0.0)
    top_scores, top = scores.topk(max_plates)
    count = (top_scores > 0).sum()
    return count, boxes.index_select(0, top), top_scores


def merged_plates(
    num_dets: Tensor,
    det_boxes: Tensor,
    det_scores: Tensor,
    height: Tensor,
    width: Tensor,
    grid: int = spec.TILE_GRID,
    thresholds: tuple[float, float, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The image's plates from its views' detections: ``merge_views`` then ``suppress_across_views``, keeping at
    most K, as many as one view may hold. Returns the count, boxes ``[K, 4]`` (original pixels) and scores ``[K]``,
    best first."""
    boxes, scores = merge_views(num_dets, det_boxes, det_scores, height, width, grid, thresholds)
    return suppress_across_views(boxes, scores, det_scores.shape[1])


def detections_for_boxes(
    boxes: np.ndarray, height: int, width: int, max_plates: int, score: float, tile_grid: int = spec.TILE_GRID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop-step inputs that detect ``boxes`` (original pixels) in the whole view with ``score``; tiles detect none.

    For feeding known boxes (reference labels, calibration) to the served crop step: num_dets ``[V, 1]``,
    det_boxes ``[V, K, 4]`` and det_scores ``[V, K]``.
    """
    count, views = min(len(boxes), max_plates), spec.image_views(height, width, tile_grid)
    num_dets = np.zeros((views, 1), np.int32)
    det_boxes = np.zeros((views, max_plates, 4), np.float32)
    det_scores = np.zeros((views, max_plates), np.float32)
    num_dets[0, 0] = count
    det_boxes[0, :count] = boxes_to_letterbox(torch.from_numpy(np.asarray(boxes[:count], np.float32)), height, width)
    det_scores[0, :count] = score
    return num_dets, det_boxes, det_scores
