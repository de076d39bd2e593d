"""``preprocess`` on the CPU target: the detector's letterboxed views drawn with OpenCV (Triton Python backend).

The same views as the exported ``preprocess`` graph that the GPU target runs (``alpr.views``: whole-pixel windows
and paddings, so each view is one ``cv2.resize`` and a paste, within one grey level of the graph), at a small share of
its cost on a CPU. Input ``image`` UINT8 [H, W, 3] BGR; output ``images`` UINT8 [V, 3, 640, 640]: the whole image,
and the tiles of the grid named by the config parameter ``tile_grid`` when the image is larger than the canvas. An
image of the wrong type, shape or size is refused with INVALID_ARGUMENT for that request alone.
"""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

from alpr.spec import IMAGE_INPUT, VIEWS
from alpr.views import ImageError, check_image, letterbox_views


class TritonPythonModel:
    """Each request on its own; one thread per instance, like the other CPU steps."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.grid = int(config["parameters"]["tile_grid"]["string_value"])
        cv2.setNumThreads(1)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy()
            try:
                check_image(image)
            except ImageError as error:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
                )
                continue
            tensor = pb_utils.Tensor(VIEWS, np.ascontiguousarray(letterbox_views(image, self.grid)))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
