"""Pre- and post-processing geometry of the pipeline, written as torch modules that export to ONNX graphs.

Two steps of the served ensemble live here:

* ``DetectorViews`` (the ``preprocess`` step): the detector looks at V = 1 + G x G views of the original BGR image:
  the whole frame, then a G x G grid of overlapping tiles (``spec.TILE_GRID``), which bring small plates to the
  detector at about G times the size. Each view's window is scaled by r = min(640 / h, 640 / w), keeping its
  aspect, centred on a 640x640 canvas filled with grey 114 and flipped to RGB planes: the YOLOv5 letterbox.
* ``PlateCropper`` (the ``crop`` step): each view's detections are mapped back from its canvas to original pixels,
  tiles keep only the small plates they are there for, the views' detections are merged by suppression, and each
  kept box, grown by 20 % of its height above and below, is area-resampled to 24x94 from the original-resolution
  image (``area_taps``: anti-aliased, as the published recogniser's training crops were).

The views resample bilinearly with the pixel-centre convention of ``cv2.resize``: output pixel u covers the continuous
interval [u, u + 1), its centre u + 0.5 maps through the affine transform to a continuous source position X, and the
source is sampled at pixel index X - 0.5 with replicated borders. Sampling gathers just the four neighbours of every
output pixel (one element-wise gather each), so its cost follows the output size; the only whole-image operation is
the cast of the uint8 input to float32, which comes first because TensorRT admits uint8 only at graph boundaries.

The letterbox transform is exact: the same r on both axes and fractional padding (pad = (640 - w r) / 2), and the
tile windows have fractional corners, so a box maps back to the original image without rounding. When the whole
view's W r, H r and paddings are whole numbers (1920x1080, 1280x720, 640x480, any square image...) its canvas is
``cv2.resize`` plus ``cv2.copyMakeBorder``.

NumPy/OpenCV references of both steps, for tests and export verification, close the module.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.onnx import operators

from alpr import spec
from alpr.detector_graph import suppression_matrix


def letterbox_transform(height: int | Tensor, width: int | Tensor) -> tuple[Tensor, Tensor, Tensor] | tuple[float, ...]:
    """Scale r and paddings (pad_x, pad_y) of the letterbox of an image of ``height`` x ``width`` pixels.

    A point (x, y) of the original image, in continuous pixel coordinates, lands at (x r + pad_x, y r + pad_y) on the
    detector canvas. Evaluated in float32 with the same operations for Python sizes (returns floats) and for tensor
    sizes (returns tensors, as inside an exported graph), so both agree to the bit.
    """
    size = float(spec.DETECTOR_SIZE)
    if isinstance(height, Tensor) or isinstance(width, Tensor):
        h, w = _float32_tensor(height), _float32_tensor(width)
        r = torch.minimum(size / h, size / w)
        return r, (size - w * r) / 2, (size - h * r) / 2
    h, w, size32 = np.float32(height), np.float32(width), np.float32(size)
    r = np.minimum(size32 / h, size32 / w)
    return float(r), float((size32 - w * r) / np.float32(2)), float((size32 - h * r) / np.float32(2))


def _float32_tensor(value: int | Tensor) -> Tensor:
    return value.to(torch.float32) if isinstance(value, Tensor) else torch.tensor(float(value))


def view_windows(height: int | Tensor, width: int | Tensor, grid: int = spec.TILE_GRID) -> Tensor:
    """Windows x0, y0, x1, y1 ``[spec.detector_views(grid), 4]`` (float32, original pixels) of the detector views.

    The first is the whole image; then, for ``grid`` > 1, the tiles row by row, each
    ``1 / (grid - (grid - 1) * overlap)`` of the image on either axis, neighbours overlapping by ``spec.TILE_OVERLAP``
    of a tile, the last one ending on the border.
    """
    h, w = _float32_tensor(height), _float32_tensor(width)
    zero = torch.zeros_like(w)
    windows = [torch.stack([zero, zero, w, h])]
    span = grid - (grid - 1) * spec.TILE_OVERLAP
    tiles = range(grid) if grid > 1 else range(0)
    for row in tiles:
        for col in tiles:
            x0, y0 = w * (col * (1 - spec.TILE_OVERLAP) / span), h * (row * (1 - spec.TILE_OVERLAP) / span)
            x1 = w if col == grid - 1 else x0 + w / span
            y1 = h if row == grid - 1 else y0 + h / span
            windows.append(torch.stack([x0, y0, x1, y1]))
    return torch.stack(windows)


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


def _as_float(image: Tensor) -> Tensor:
    # The graphs cast the uint8 image before anything else reads it: TensorRT admits uint8 tensors only as graph
    # inputs and outputs that a Cast consumes or produces.
    return image.to(torch.float32)


def _pixel_centres(count: int, device: torch.device) -> Tensor:
    return torch.arange(count, dtype=torch.float32, device=device) + 0.5


class DetectorViews(nn.Module):
    """The ``preprocess`` step: BGR uint8 ``[H, W, 3]`` -> letterboxed RGB uint8 views ``[V, 3, 640, 640]``.

    ``grid`` 1 gives the whole image alone, which is what the detector is trained on: training and serving see
    identical pixels.
    """

    def __init__(self, grid: int = spec.TILE_GRID) -> None:
        super().__init__()
        self.grid = grid  # V = spec.detector_views(grid)

    def forward(self, image: Tensor) -> Tensor:
        pixels = _as_float(image)
        height, width = image_size(pixels)
        x0, y0, x1, y1 = view_windows(height, width, self.grid).unsqueeze(-1).unbind(1)  # each [V, 1]
        r, pad_x, pad_y = letterbox_transform(y1 - y0, x1 - x0)
        centres = _pixel_centres(spec.DETECTOR_SIZE, image.device)
        # Canvas pixels whose centre falls on the scaled window take its samples; the rest are the fill.
        inside_x = (centres >= pad_x) & (centres < pad_x + (x1 - x0) * r)  # [V, 640]
        inside_y = (centres >= pad_y) & (centres < pad_y + (y1 - y0) * r)
        source_x = x0 + (centres - pad_x) / r - 0.5
        source_y = y0 + (centres - pad_y) / r - 0.5
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
    centre = start.unsqueeze(1) + _pixel_centres(count, start.device).unsqueeze(0) * scale  # [M, count]
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
    image = _as_float(torch.from_numpy(image) if isinstance(image, np.ndarray) else image)
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
    thresholds: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """The views' detections in original pixels, ``[V * K, 4]``, with scores ``[V * K]``, 0 where not kept.

    A view's padding rows score 0, and so do boxes under the view's threshold (``thresholds``, the whole view's and
    a tile's, default ``spec.view_thresholds(grid)``) and a tile's boxes that it is not there for: those wider than
    ``spec.TILE_MAX_PLATE`` on the whole view's canvas, and those touching an inner edge of the tile.
    """
    views, k = det_scores.shape
    x0, y0, x1, y1 = view_windows(height, width, grid).unsqueeze(-1).unbind(1)  # each [V, 1]
    boxes = boxes_from_letterbox(det_boxes, y1 - y0, x1 - x0) + torch.stack([x0, y0, x0, y0], -1)
    bx1, by1, bx2, by2 = boxes.unbind(-1)  # each [V, K], original pixels
    r = letterbox_transform(y1 - y0, x1 - x0)[0]
    kept = torch.arange(k, device=det_scores.device) < num_dets.reshape(views, 1)
    tile = torch.arange(views, device=det_scores.device).reshape(views, 1) > 0
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
    whole_view_threshold, tile_threshold = thresholds or spec.view_thresholds(grid)
    confident = det_scores >= torch.where(tile, tile_threshold, whole_view_threshold)
    kept = kept & confident & (~tile | (small & clear_of_inner_edges))
    return boxes.reshape(views * k, 4), torch.where(kept, det_scores, 0.0).reshape(views * k)


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
    thresholds: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The image's plates from its views' detections: ``merge_views`` then ``suppress_across_views``, keeping at
    most K, as many as one view may hold. Returns the count, boxes ``[K, 4]`` (original pixels) and scores ``[K]``,
    best first."""
    boxes, scores = merge_views(num_dets, det_boxes, det_scores, height, width, grid, thresholds)
    return suppress_across_views(boxes, scores, det_scores.shape[1])


class PlateCropper(nn.Module):
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
        pixels = _as_float(image)
        height, width = image_size(pixels)
        count, boxes, scores = merged_plates(num_dets, det_boxes, det_scores, height, width, self.grid)
        rows = torch.arange(torch.clamp(count, min=1), dtype=torch.int64, device=image.device)
        valid = rows < count
        limits = torch.stack([width, height, width, height]).to(torch.float32)
        boxes = torch.where(
            valid.unsqueeze(1), torch.minimum(torch.clamp(boxes.index_select(0, rows), min=0.0), limits), 0.0
        )
        crops = torch.where(valid.reshape(-1, 1, 1, 1), crop_plates(pixels, boxes), 0.0)
        return crops, boxes, torch.where(valid, scores.index_select(0, rows), 0.0)


def detections_for_boxes(
    boxes: np.ndarray, height: int, width: int, max_plates: int, score: float, tile_grid: int = spec.TILE_GRID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop-step inputs that detect ``boxes`` (original pixels) in the whole view with ``score``; tiles detect none.

    For feeding known boxes (reference labels, calibration) to the served crop step: num_dets ``[V, 1]``,
    det_boxes ``[V, K, 4]`` and det_scores ``[V, K]``.
    """
    count, views = min(len(boxes), max_plates), spec.detector_views(tile_grid)
    num_dets = np.zeros((views, 1), np.int32)
    det_boxes = np.zeros((views, max_plates, 4), np.float32)
    det_scores = np.zeros((views, max_plates), np.float32)
    num_dets[0, 0] = count
    det_boxes[0, :count] = boxes_to_letterbox(torch.from_numpy(np.asarray(boxes[:count], np.float32)), height, width)
    det_scores[0, :count] = score
    return num_dets, det_boxes, det_scores


# NumPy/OpenCV references: independent implementations in float64 for tests and export verification.


def _bilinear_numpy(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Float64 bilinear samples of an HWC image at pixel-index grids ``y`` ``[A, 1]`` and ``x`` ``[1, B]``."""
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
    return [tuple(np.float32(v) for v in window) for window in view_windows(height, width, grid).tolist()]


def letterbox_reference(image: np.ndarray, grid: int = spec.TILE_GRID) -> np.ndarray:
    """NumPy reference of ``DetectorViews``: explicit float64 bilinear sampling; uint8 ``[V, 3, 640, 640]`` RGB."""
    height, width = image.shape[:2]
    views = []
    for x0, y0, x1, y1 in _windows_numpy(height, width, grid):
        view_height, view_width = y1 - y0, x1 - x0  # float32, as the graph computes them
        r, pad_x, pad_y = letterbox_transform(view_height, view_width)
        centres = np.arange(spec.DETECTOR_SIZE, dtype=np.float64) + 0.5
        # The same float32 comparisons as the graph decide which canvas pixels belong to the window.
        centres32 = centres.astype(np.float32)
        r32, pad_x32, pad_y32 = np.float32(r), np.float32(pad_x), np.float32(pad_y)
        inside_x = (centres32 >= pad_x32) & (centres32 < pad_x32 + view_width * r32)
        inside_y = (centres32 >= pad_y32) & (centres32 < pad_y32 + view_height * r32)
        source_y = float(y0) + (centres - pad_y) / r - 0.5
        source_x = float(x0) + (centres - pad_x) / r - 0.5
        samples = _bilinear_numpy(image, source_y[:, None], source_x[None, :])
        canvas = np.full_like(samples, spec.LETTERBOX_FILL)
        inside = inside_y[:, None] & inside_x[None, :]
        canvas[inside] = np.round(samples[inside])
        views.append(canvas[..., ::-1].astype(np.uint8).transpose(2, 0, 1))
    return np.stack(views)


def letterbox_opencv(image: np.ndarray) -> np.ndarray:
    """The conventional letterbox, ``cv2.resize`` (INTER_LINEAR) then ``cv2.copyMakeBorder`` with whole pixels.

    Equal to the served preprocess's whole view (within OpenCV's fixed-point rounding) when W r, H r and both
    paddings are whole numbers.
    """
    height, width = image.shape[:2]
    r, pad_x, pad_y = letterbox_transform(height, width)
    resized = cv2.resize(image, (round(width * r), round(height * r)), interpolation=cv2.INTER_LINEAR)
    left, top = round(pad_x), round(pad_y)
    right = spec.DETECTOR_SIZE - left - resized.shape[1]
    bottom = spec.DETECTOR_SIZE - top - resized.shape[0]
    fill = (spec.LETTERBOX_FILL,) * 3
    canvas = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].copy()


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


def plate_cropper_reference(
    image: np.ndarray, num_dets: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, grid: int = spec.TILE_GRID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of ``PlateCropper`` on the same inputs: crops, plate_boxes, plate_scores."""
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
