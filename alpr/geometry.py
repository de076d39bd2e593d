"""Pre- and post-processing geometry of the pipeline, written as torch modules that export to ONNX graphs.

Two steps of the served ensemble live here:

* ``Letterbox`` (the ``preprocess`` step): the original BGR image is scaled by r = min(640 / H, 640 / W), keeping
  its aspect, centred on a 640x640 canvas filled with grey 114 and flipped to RGB planes.
* ``PlateCropper`` (the ``crop`` step): each detected box is mapped back from letterbox to original pixels, grown by
  20 % of its height above and below, and resampled to 24x94 from the original-resolution image.

Both resample bilinearly with the pixel-centre convention of ``cv2.resize``: output pixel u covers the continuous
interval [u, u + 1), its centre u + 0.5 maps through the affine transform to a continuous source position X, and the
source is sampled at pixel index X - 0.5 with replicated borders. Sampling gathers just the four neighbours of every
output pixel (one element-wise gather each), so its cost follows the output size; the only whole-image operation is
the cast of the uint8 input to float32, which comes first because TensorRT admits uint8 only at graph boundaries.

The letterbox transform is exact: the same r on both axes and fractional padding (pad = (640 - W r) / 2), so a box
maps back to the original image without rounding. When W r, H r and the paddings are whole numbers (1920x1080,
1280x720, 640x480, any square image...) the result is ``cv2.resize`` plus ``cv2.copyMakeBorder``.

NumPy/OpenCV references of both steps, for tests and export verification, close the module.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.onnx import operators

from alpr import spec


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


class Letterbox(nn.Module):
    """The ``preprocess`` step: BGR uint8 ``[H, W, 3]`` -> letterboxed RGB uint8 ``[1, 3, 640, 640]``.

    The same module prepares detector training images, so training and serving see identical pixels.
    """

    def forward(self, image: Tensor) -> Tensor:
        pixels = _as_float(image)
        height, width = image_size(pixels)
        r, pad_x, pad_y = letterbox_transform(height, width)
        centres = _pixel_centres(spec.DETECTOR_SIZE, image.device)
        # Canvas pixels whose centre falls on the scaled image take its samples; the rest are the fill.
        inside_x = (centres >= pad_x) & (centres < pad_x + width.to(torch.float32) * r)
        inside_y = (centres >= pad_y) & (centres < pad_y + height.to(torch.float32) * r)
        source_x = (centres - pad_x) / r - 0.5
        source_y = (centres - pad_y) / r - 0.5
        rgb = torch.arange(2, -1, -1, device=image.device)  # the BGR planes 2, 1, 0 in RGB order
        samples = sample_bilinear(pixels, source_y.reshape(1, -1, 1), source_x.reshape(1, 1, -1), rgb.reshape(3, 1, 1))
        inside = inside_y.unsqueeze(1) & inside_x.unsqueeze(0)
        canvas = torch.where(inside, torch.round(samples), float(spec.LETTERBOX_FILL))
        return canvas.unsqueeze(0).to(torch.uint8)


def crop_plates(image: Tensor | np.ndarray, boxes: Tensor | np.ndarray) -> Tensor:
    """Recogniser inputs ``[M, 3, 24, 94]`` for x1, y1, x2, y2 ``boxes`` ``[M, 4]`` in original-image pixels.

    The region is the box grown by ``CROP_MARGIN`` of its height above and below (none sideways), resampled
    bilinearly from the BGR ``image`` ``[H, W, 3]`` (uint8, or its float32 values), kept BGR, normalised
    (x - 127.5) / 128, CHW. Used both by the served ``crop`` step and to prepare recogniser training data.
    """
    image = _as_float(torch.from_numpy(image) if isinstance(image, np.ndarray) else image)
    if isinstance(boxes, np.ndarray):
        boxes = torch.from_numpy(boxes)
    x1, y1, x2, y2 = boxes.to(device=image.device, dtype=torch.float32).unbind(-1)
    margin = spec.CROP_MARGIN * (y2 - y1)
    top = y1 - margin
    bottom = y2 + margin
    rows = _pixel_centres(spec.CROP_HEIGHT, image.device) / spec.CROP_HEIGHT
    cols = _pixel_centres(spec.CROP_WIDTH, image.device) / spec.CROP_WIDTH
    source_y = top.unsqueeze(1) + rows.unsqueeze(0) * (bottom - top).unsqueeze(1) - 0.5  # [M, 24]
    source_x = x1.unsqueeze(1) + cols.unsqueeze(0) * (x2 - x1).unsqueeze(1) - 0.5  # [M, 94]
    bgr = torch.arange(3, device=image.device).reshape(1, 3, 1, 1)
    samples = sample_bilinear(
        image, source_y.reshape(-1, 1, spec.CROP_HEIGHT, 1), source_x.reshape(-1, 1, 1, spec.CROP_WIDTH), bgr
    )
    return (samples - spec.PLATE_MEAN) * spec.PLATE_SCALE


class PlateCropper(nn.Module):
    """The ``crop`` step: detections on the letterbox canvas -> recogniser crops, boxes and scores of the image.

    Inputs: image uint8 ``[H, W, 3]``, num_dets int32 ``[1, 1]``, det_boxes float32 ``[1, K, 4]`` (canvas pixels),
    det_scores float32 ``[1, K]``. Outputs: crops ``[M, 3, 24, 94]``, plate_boxes ``[M, 4]`` (original pixels, clipped
    to the image), plate_scores ``[M]`` with M = max(num_dets, 1): an image without detections yields one padding
    row of zeros, so that every later step receives a batch of at least one.
    """

    def forward(self, image: Tensor, num_dets: Tensor, det_boxes: Tensor, det_scores: Tensor) -> tuple[Tensor, ...]:
        pixels = _as_float(image)
        height, width = image_size(pixels)
        count = num_dets.reshape(()).to(torch.int64)
        rows = torch.arange(torch.clamp(count, min=1), dtype=torch.int64, device=image.device)
        valid = rows < count
        boxes = boxes_from_letterbox(det_boxes[0].index_select(0, rows), height, width)
        limits = torch.stack([width, height, width, height]).to(torch.float32)
        boxes = torch.where(valid.unsqueeze(1), torch.minimum(torch.clamp(boxes, min=0.0), limits), 0.0)
        crops = torch.where(valid.reshape(-1, 1, 1, 1), crop_plates(pixels, boxes), 0.0)
        scores = torch.where(valid, det_scores[0].index_select(0, rows), 0.0)
        return crops, boxes, scores


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


def letterbox_reference(image: np.ndarray) -> np.ndarray:
    """NumPy reference of ``Letterbox``: explicit float64 bilinear sampling; uint8 ``[1, 3, 640, 640]`` RGB."""
    height, width = image.shape[:2]
    r, pad_x, pad_y = letterbox_transform(height, width)
    centres = np.arange(spec.DETECTOR_SIZE, dtype=np.float64) + 0.5
    # The same float32 comparisons as the graph decide which canvas pixels belong to the image.
    centres32 = centres.astype(np.float32)
    inside_x = (centres32 >= np.float32(pad_x)) & (centres32 < np.float32(pad_x) + np.float32(width) * np.float32(r))
    inside_y = (centres32 >= np.float32(pad_y)) & (centres32 < np.float32(pad_y) + np.float32(height) * np.float32(r))
    samples = _bilinear_numpy(image, ((centres - pad_y) / r - 0.5)[:, None], ((centres - pad_x) / r - 0.5)[None, :])
    canvas = np.full_like(samples, spec.LETTERBOX_FILL)
    inside = inside_y[:, None] & inside_x[None, :]
    canvas[inside] = np.round(samples[inside])
    return canvas[..., ::-1].astype(np.uint8).transpose(2, 0, 1)[None].copy()


def letterbox_opencv(image: np.ndarray) -> np.ndarray:
    """The conventional letterbox, ``cv2.resize`` (INTER_LINEAR) then ``cv2.copyMakeBorder`` with whole pixels.

    Equal to ``Letterbox`` (within OpenCV's fixed-point rounding) when W r, H r and both paddings are whole numbers.
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


def crop_reference(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """NumPy reference of ``crop_plates`` for ``boxes`` ``[M, 4]`` in original pixels: float32 ``[M, 3, 24, 94]``."""
    crops = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64):
        margin = spec.CROP_MARGIN * (y2 - y1)
        top, bottom = y1 - margin, y2 + margin
        rows = (np.arange(spec.CROP_HEIGHT) + 0.5) / spec.CROP_HEIGHT
        cols = (np.arange(spec.CROP_WIDTH) + 0.5) / spec.CROP_WIDTH
        source_y = top + rows * (bottom - top) - 0.5
        source_x = x1 + cols * (x2 - x1) - 0.5
        samples = _bilinear_numpy(image, source_y[:, None], source_x[None, :])
        crops.append(((samples - spec.PLATE_MEAN) * spec.PLATE_SCALE).transpose(2, 0, 1))
    return (
        np.stack(crops).astype(np.float32) if crops else np.zeros((0, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH), np.float32)
    )


def plate_cropper_reference(
    image: np.ndarray, num_dets: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of ``PlateCropper`` on the same inputs: crops, plate_boxes, plate_scores."""
    height, width = image.shape[:2]
    count = int(np.asarray(num_dets).reshape(()))
    r, pad_x, pad_y = letterbox_transform(height, width)
    rows = max(count, 1)
    boxes = (np.asarray(det_boxes, np.float64)[0, :rows] - [pad_x, pad_y, pad_x, pad_y]) / r
    boxes = np.clip(boxes, 0, [width, height, width, height])
    scores = np.asarray(det_scores, np.float64)[0, :rows].copy()
    boxes[count:] = 0
    scores[count:] = 0
    crops = crop_reference(image, boxes)
    crops[count:] = 0
    return crops, boxes.astype(np.float32), scores.astype(np.float32)
