"""``ctc_decoder``: the last step of ``plate_recognition`` (Triton Python backend, NumPy only, no PyTorch).

Inputs, for the M crop rows of one image: logits [M, 23, 18], plate_boxes [M, 4], plate_scores [M]. Rows whose
plate_scores is 0 are the padding the crop step emits when nothing was detected; they are dropped, so the answer has
N <= M plates (N = 0 for an image without plates): boxes [N, 4], det_scores [N], texts BYTES [N] (greedy CTC),
text_scores [N] (probability of the greedy path). The decoding itself is ``alpr.ctc.decode_plates``.
"""

from __future__ import annotations

import os
from typing import Any

import triton_python_backend_utils as pb_utils

from alpr.ctc import decode_plates
from alpr.spec import OUTPUT_NAMES, RESTARTS_METRIC, RESTARTS_VARIABLE, step_inputs

INPUTS = step_inputs("ctc_decoder")


class TritonPythonModel:
    """Decodes each request on its own: the work is microseconds per plate."""

    def initialize(self, args: dict[str, str]) -> None:
        """Publish the launcher's restart count on the server's metrics endpoint (a gauge: every instance sets it)."""
        self.restarts_family = pb_utils.MetricFamily(
            name=RESTARTS_METRIC,
            description="times the launcher restarted the server after a step's process or the server died",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.restarts = self.restarts_family.Metric(labels={})
        self.restarts.set(float(os.environ.get(RESTARTS_VARIABLE, "0")))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            inputs = (pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUTS)
            try:
                outputs = decode_plates(*inputs)
            except ValueError as error:
                message = f"ctc_decoder: {error}"
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))
                )
                continue
            tensors = [pb_utils.Tensor(name, value) for name, value in zip(OUTPUT_NAMES, outputs, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
