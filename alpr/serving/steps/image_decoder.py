"""``image_decoder``: the first step of ``plate_recognition_encoded`` (Triton Python backend, OpenCV, no PyTorch).

Input ``encoded`` BYTES [1]: one image file (JPEG, PNG, WebP, BMP or TIFF). Output ``image`` UINT8 [H, W, 3], BGR as
``cv2.imread`` reads it, for the same steps as ``plate_recognition``. A file that is not an image, is damaged, or
declares sides outside [16, 4096] is refused with INVALID_ARGUMENT for that request alone, before anything is
decoded (``alpr.image_files``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from alpr.image_files import ImageFileError, decode_image_file
from alpr.spec import ENCODED_INPUT, IMAGE_INPUT


class TritonPythonModel:
    """Decodes each request on its own."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, ENCODED_INPUT).as_numpy()
            try:
                if encoded.size != 1:
                    raise ImageFileError(f"one image file per request, got {encoded.size}")
                data = encoded.reshape(-1)[0]
                image = decode_image_file(data if isinstance(data, bytes) else bytes(data))
            except ImageFileError as error:
                message = f"image_decoder: {error}"
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
                )
                continue
            tensor = pb_utils.Tensor(IMAGE_INPUT, np.ascontiguousarray(image))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
