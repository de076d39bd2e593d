"""One raw gRPC request to any model of a running server, for tests that call steps directly; comparing answers."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from alpr import spec
from alpr.client import Plate, plates_agree


def infer(
    url: str, model: str, inputs: dict[str, tuple[np.ndarray, str]], outputs: tuple[str, ...] = spec.OUTPUT_NAMES
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


def assert_same_plates(actual: list[Plate], expected: list[Plate]) -> None:
    """The same texts, and boxes and scores within what batching changes in float32 arithmetic."""
    assert plates_agree(actual, expected), f"{actual} != {expected}"
