"""The detector's views of one image in NumPy and OpenCV, without PyTorch: the ``preprocess`` step of the CPU targets.

The convention (``alpr.geometry`` states it for the graph, which computes the same views on the GPU target): the
views are the whole image, then, when its long side exceeds the 640 canvas, a G x G grid of overlapping tiles with
whole-pixel corners. Each view's window is
scaled by r = min(640 / h, 640 / w) to round(w r) x round(h r) pixels, sampled bilinearly with the pixel-centre
convention of ``cv2.resize`` from the window alone (its borders replicated), and placed on a 640x640 canvas of grey
114 at whole-pixel paddings floor((640 - round(w r)) / 2): exactly ``cv2.resize`` with ``fx = fy = r`` and a paste.
The sizes are evaluated in float32 with the operations of the graph, so both agree to the bit.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from alpr import spec


class ImageError(ValueError):
    """An image the service does not accept (dtype, shape or size)."""


def check_image(image: np.ndarray) -> None:
    """Raise ``ImageError`` unless ``image`` is a uint8 BGR ``[H, W, 3]`` array with sides in the accepted range."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"image must be a uint8 HxWx3 array (BGR), got {image.dtype} with shape {list(image.shape)}")
    height, width = image.shape[:2]
    if not (min(height, width) >= spec.MIN_IMAGE_SIDE and max(height, width) <= spec.MAX_IMAGE_SIDE):
        raise ImageError(
            f"image sides must lie in [{spec.MIN_IMAGE_SIDE}, {spec.MAX_IMAGE_SIDE}] pixels, got {height}x{width}"
        )


def letterbox_layout(height: float | np.floating, width: float | np.floating) -> tuple[float, float, float, int, int]:
    """Scale r, paddings (pad_x, pad_y) and scaled size (rows, cols) of the letterbox of a ``height`` x ``width``
    window, in float32 as the graph computes them (``alpr.geometry.letterbox_transform``)."""
    size = np.float32(spec.DETECTOR_SIZE)
    h, w = np.float32(height), np.float32(width)
    r = np.minimum(size / h, size / w)
    rows, cols = np.round(h * r), np.round(w * r)  # half to even, as torch.round and cv2.resize
    two = np.float32(2)
    return float(r), float(np.floor((size - cols) / two)), float(np.floor((size - rows) / two)), int(rows), int(cols)


def window_corners(
    height: int, width: int, grid: int = spec.TILE_GRID, *, all_tiles: bool = False
) -> list[tuple[int, int, int, int]]:
    """Whole-pixel windows x0, y0, x1, y1 of the views an image gets (``spec.image_views``; with ``all_tiles`` the
    tiles whatever its size), as ``alpr.geometry.view_windows`` evaluates them in float32."""
    h, w = np.float32(height), np.float32(width)
    windows = [(0, 0, int(width), int(height))]
    span = grid - (grid - 1) * spec.TILE_OVERLAP
    tiles = range(grid) if grid > 1 else range(0)
    for row in tiles:
        for col in tiles:
            x0 = w * np.float32(col * (1 - spec.TILE_OVERLAP) / span)
            y0 = h * np.float32(row * (1 - spec.TILE_OVERLAP) / span)
            x1 = w if col == grid - 1 else np.round(x0 + w / np.float32(span))
            y1 = h if row == grid - 1 else np.round(y0 + h / np.float32(span))
            windows.append((int(np.round(x0)), int(np.round(y0)), int(x1), int(y1)))
    return windows if all_tiles else windows[: spec.image_views(height, width, grid)]


def letterbox_views(image: np.ndarray, grid: int = spec.TILE_GRID) -> np.ndarray:
    """The detector's views of a BGR uint8 ``[H, W, 3]`` image: letterboxed RGB uint8 ``[V, 3, 640, 640]``."""
    height, width = image.shape[:2]
    windows = window_corners(height, width, grid)
    size = spec.DETECTOR_SIZE
    views = np.full((len(windows), 3, size, size), spec.LETTERBOX_FILL, np.uint8)
    for view, (x0, y0, x1, y1) in enumerate(windows):
        r, pad_x, pad_y, rows, cols = letterbox_layout(y1 - y0, x1 - x0)
        # fx = fy = r (no dsize): OpenCV then samples at (u + 0.5) / r - 0.5, as the graph does.
        scaled = cv2.resize(image[y0:y1, x0:x1], None, fx=r, fy=r, interpolation=cv2.INTER_LINEAR)
        scaled = _fit(scaled, rows, cols)
        top, left = int(pad_y), int(pad_x)
        for channel, plane in enumerate(cv2.split(scaled)):  # BGR planes into RGB order
            views[view, 2 - channel, top : top + rows, left : left + cols] = plane
    return views


def _fit(scaled: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``scaled`` cut or edge-extended to ``rows`` x ``cols``: OpenCV rounds w r in float64, the graph in float32, and
    the two can differ by one pixel when w r lies within float32 precision of a half."""
    scaled = scaled[:rows, :cols]
    if scaled.shape[:2] == (rows, cols):
        return scaled
    return np.pad(scaled, ((0, rows - scaled.shape[0]), (0, cols - scaled.shape[1]), (0, 0)), mode="edge")


def views_tile_grid(preprocess: Callable[[np.ndarray], np.ndarray]) -> int:
    """The tile grid G of a ``preprocess`` implementation (image -> views): from its views of a frame larger than the
    canvas, which gets every tile."""
    frame = np.zeros((spec.TILES_ABOVE_SIDE + 1, spec.TILES_ABOVE_SIDE + 1, 3), np.uint8)
    return spec.tile_grid_of(len(preprocess(frame)))
