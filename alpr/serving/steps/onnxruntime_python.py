"""``onnxruntime_python``: a Python-based Triton backend that serves one ONNX graph through onnxruntime on the CPU.

Triton runs this one file for every model whose config says ``backend: "onnxruntime_python"`` (the server launcher
places it at ``<backend-directory>/onnxruntime_python/model.py``); the graph is the model's ``<version>/model.onnx``.
It is the CPU stand-in for the native onnxruntime backend, which the Triton build bundled in nvidia-pytriton lacks.

Config ``parameters`` (all optional, string values):
  intra_op_threads / inter_op_threads   onnxruntime thread pools of one instance (default 1 / 1)

A batching model (``max_batch_size > 0``) runs all the requests the dynamic batcher hands over in one session call
and splits the outputs back; every failure is answered as a ``TritonError`` on the request that caused it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

ONNX_TO_NUMPY = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


class InvalidRequest(ValueError):
    """A request the graph must not see; answered as an error on that request alone."""


class TritonPythonModel:
    """One onnxruntime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.batched = self.max_batch_size > 0
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.output_dtypes = {
            tensor["name"]: pb_utils.triton_string_to_numpy(tensor["data_type"]) for tensor in config["output"]
        }

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", 1))
        options.inter_op_num_threads = int(parameters.get("inter_op_threads", 1))
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        model_file = config.get("default_model_filename") or "model.onnx"
        model_path = Path(args["model_repository"]) / args["model_version"] / model_file
        if not model_path.is_file():
            raise pb_utils.TritonModelException(f"{self.model_name}: no ONNX graph at {model_path}")
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._check_signature(config)

    def _check_signature(self, config: dict[str, Any]) -> None:
        """Refuse to load when the graph's inputs/outputs disagree with the config (names, types, fixed sizes)."""
        graph_tensors = {tensor.name: tensor for tensor in (*self.session.get_inputs(), *self.session.get_outputs())}
        problems = []
        for tensor in (*config["input"], *config["output"]):
            name = tensor["name"]
            if name not in graph_tensors:
                problems.append(f"the graph has no tensor {name!r} (it has {sorted(graph_tensors)})")
                continue
            graph_tensor = graph_tensors[name]
            expected_dtype = pb_utils.triton_string_to_numpy(tensor["data_type"])
            if ONNX_TO_NUMPY.get(graph_tensor.type) != expected_dtype:
                problems.append(f"{name}: graph type {graph_tensor.type}, config {tensor['data_type']}")
            dims = tensor["reshape"]["shape"] if "reshape" in tensor else tensor["dims"]
            config_shape = ([-1] if self.batched else []) + [int(d) for d in dims]
            graph_shape = graph_tensor.shape
            if len(graph_shape) != len(config_shape):
                problems.append(f"{name}: graph shape {graph_shape}, config {config_shape}")
                continue
            for graph_dim, config_dim in zip(graph_shape, config_shape, strict=True):
                if isinstance(graph_dim, int) and config_dim != -1 and graph_dim != config_dim:
                    problems.append(f"{name}: graph shape {graph_shape}, config {config_shape}")
                    break
        if problems:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: model.onnx does not match config.pbtxt: " + "; ".join(problems)
            )

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise InvalidRequest(f"{self.model_name}: missing input {name!r}")
            feeds[name] = tensor.as_numpy()
        return feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return [
            np.ascontiguousarray(output, dtype=self.output_dtypes[name])
            for name, output in zip(self.output_names, outputs, strict=True)
        ]

    def _response(self, outputs: list[np.ndarray]) -> Any:
        tensors = [pb_utils.Tensor(name, output) for name, output in zip(self.output_names, outputs, strict=True)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, error: Exception) -> Any:
        message = str(error) if isinstance(error, InvalidRequest) else f"{self.model_name}: {error}"
        code = pb_utils.TritonError.INVALID_ARG if isinstance(error, InvalidRequest) else pb_utils.TritonError.INTERNAL
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

    def _answer_one(self, feeds: dict[str, np.ndarray]) -> Any:
        try:
            return self._response(self._run(feeds))
        except Exception as error:  # onnxruntime raises several exception types; each becomes this request's error
            return self._error(error)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        pending: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                pending.append((index, self._feeds(request)))
            except InvalidRequest as error:
                responses[index] = self._error(error)
        if self.batched and len(pending) > 1:
            self._answer_batch(pending, responses)
        else:
            for index, feeds in pending:
                responses[index] = self._answer_one(feeds)
        return responses

    def _answer_batch(self, pending: list[tuple[int, dict[str, np.ndarray]]], responses: list[Any]) -> None:
        """One session call for the whole dynamic batch; on failure, each request alone so only the culprit fails."""
        merged = {name: np.concatenate([feeds[name] for _, feeds in pending]) for name in self.input_names}
        try:
            outputs = self._run(merged)
        except Exception:
            for index, feeds in pending:
                responses[index] = self._answer_one(feeds)
            return
        sizes = [len(feeds[self.input_names[0]]) for _, feeds in pending]
        boundaries = np.cumsum(sizes)[:-1]
        per_request = zip(*(np.split(output, boundaries) for output in outputs), strict=True)
        for (index, _), request_outputs in zip(pending, per_request, strict=True):
            responses[index] = self._response([np.ascontiguousarray(output) for output in request_outputs])
