"""``plate_recognition_bls``: the reference deployment's serving design, rebuilt for the benchmarks only.

The public reference pipeline serves one Python model that takes each request on its own and calls the networks one
after the other through BLS (``pb_utils.InferenceRequest(...).exec()``), then decodes in Python. This model does the
same over our graphs: preprocess -> detector -> crop -> stn -> lprnet, one blocking call per step, then greedy CTC
with ``alpr.ctc.decode_plates`` (what the ensemble's decoder step runs).

It has ``max_batch_size: 0`` and one instance, and its steps are served without dynamic batching, one instance each,
as upstream has neither. Config parameter ``step_prefix``: the prefix of the steps' model names.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from alpr import spec
from alpr.ctc import decode_plates


class StepFailedError(RuntimeError):
    """A step answered with an error; the request fails with its message."""


class TritonPythonModel:
    """Runs the pipeline for one request at a time, step after step."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.step_prefix = parameters.get("step_prefix", "")

    def _call(self, step: str, *values: np.ndarray) -> list[np.ndarray]:
        """One blocking BLS request to a served step: its inputs and outputs in the order of ``spec.STEP_TENSORS``."""
        outputs = spec.step_outputs(step)
        request = pb_utils.InferenceRequest(
            model_name=self.step_prefix + step,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, value) for name, value in zip(spec.step_inputs(step), values, strict=True)],
        )
        response = request.exec()
        if response.has_error():
            raise StepFailedError(f"{step}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def _recognise(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        (letterboxed,) = self._call("preprocess", image)
        num_dets, det_boxes, det_scores = self._call("detector", letterboxed)
        crops, plate_boxes, plate_scores = self._call("crop", image, num_dets, det_boxes, det_scores)
        (rectified,) = self._call("stn", crops)
        (logits,) = self._call("lprnet", rectified)
        return decode_plates(logits, plate_boxes, plate_scores)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, spec.IMAGE_INPUT).as_numpy()
            try:
                plates = self._recognise(image)
            except (StepFailedError, ValueError) as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
                continue
            tensors = [pb_utils.Tensor(name, value) for name, value in zip(spec.OUTPUT_NAMES, plates, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
