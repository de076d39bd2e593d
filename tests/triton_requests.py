"""One raw gRPC request to any model of a running server, for tests that call steps directly."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

# What the ensemble answers.
ENSEMBLE_OUTPUTS = ("boxes", "det_scores", "texts", "text_scores")


def infer(
    url: str, model: str, inputs: dict[str, tuple[np.ndarray, str]], outputs: tuple[str, ...] = ENSEMBLE_OUTPUTS
) -> dict[str, np.ndarray]:
    """Send ``inputs`` (name -> (array, Triton datatype)) to ``model``; returns ``outputs`` by name, in that order."""
    client = grpcclient.InferenceServerClient(url)
    try:
        tensors = []
        for name, (array, datatype) in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(name) for name in outputs])
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()
