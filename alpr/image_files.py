"""Decoding an encoded image file (JPEG, PNG, WebP, BMP, TIFF) as the service does, with its size limits first.

The ``image_decoder`` step of ``plate_recognition_encoded`` and the clients use the same function. The header is read
before anything is decoded, so that a small file declaring a huge image (a decompression bomb) is refused at once
instead of taking gigabytes of memory; the pixels are then decoded by OpenCV exactly as ``cv2.imread`` would.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

from alpr import spec

ACCEPTED = "JPEG, PNG, WebP, BMP or TIFF"


class ImageFileError(ValueError):
    """The bytes are not an image file the service accepts; the message says why."""


def declared_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding it; raises ``ImageFileError``."""
    if not data:
        raise ImageFileError("empty image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                return header.size
    except Image.DecompressionBombError as error:
        raise ImageFileError(f"image file declares too many pixels: {error}") from None
    except Image.DecompressionBombWarning as error:
        raise ImageFileError(f"image file declares too many pixels: {error}") from None
    except Image.UnidentifiedImageError:
        raise ImageFileError(f"not an image file ({ACCEPTED} expected)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"damaged image file header ({error})") from None


def decode_image_file(
    data: bytes, min_side: int = spec.MIN_IMAGE_SIDE, max_side: int = spec.MAX_IMAGE_SIDE
) -> np.ndarray:
    """The BGR uint8 ``[H, W, 3]`` image of an encoded file, as ``cv2.imread`` reads it; raises ``ImageFileError``."""
    width, height = declared_size(data)
    if not (min_side <= width <= max_side and min_side <= height <= max_side):
        raise ImageFileError(f"image sides must lie in [{min_side}, {max_side}], the file declares {width}x{height}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageFileError(f"the {width}x{height} image file is damaged or in a format OpenCV cannot decode")
    return image
