"""Server-side time per model from Triton's statistics extension, as deltas around one measurement.

Triton keeps cumulative counters per model: successful requests and their total time, and the time spent queued and
in compute (input, inference, output). The difference of two snapshots divided by the requests in between is the
average cost of one request at each step; inferences over executions is the batch size the scheduler achieved.

A request's compute time is that of the whole batch it rode in, so for a batching step the per-request compute
overstates what one image costs. The per-batch-size statistics count every execution once: their compute time per
request (``busy_ms``) is how long an instance was busy per image, the share of the machine each step takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import tritonclient.grpc as grpcclient

NS_PER_MS = 1e6


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative statistics of one model (times in nanoseconds)."""

    requests: int
    request_ns: int
    executions: int
    inferences: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    # Compute time (input + infer + output) of every execution, counted once per batch.
    busy_ns: int

    def __sub__(self, earlier: ModelCounters) -> ModelCounters:
        return ModelCounters(**{name: value - getattr(earlier, name) for name, value in asdict(self).items()})


@dataclass(frozen=True)
class StepTime:
    """Average server time of one request at one model over a measurement (milliseconds)."""

    model: str
    requests: int
    # Inferences per request: crops per image for stn/lprnet, 1 for the steps that take one image.
    inferences_per_request: float
    # Inferences per execution: the batch the dynamic batcher formed (crops for stn/lprnet, images for detector).
    average_batch: float
    request_ms: float
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float
    busy_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_counters(client: grpcclient.InferenceServerClient) -> dict[str, ModelCounters]:
    """Cumulative counters of every loaded model, by model name (versions summed)."""
    counters: dict[str, ModelCounters] = {}
    for model in client.get_inference_statistics().model_stats:
        stats = model.inference_stats
        current = ModelCounters(
            requests=stats.success.count,
            request_ns=stats.success.ns,
            executions=model.execution_count,
            inferences=model.inference_count,
            queue_ns=stats.queue.ns,
            compute_input_ns=stats.compute_input.ns,
            compute_infer_ns=stats.compute_infer.ns,
            compute_output_ns=stats.compute_output.ns,
            busy_ns=sum(
                batch.compute_input.ns + batch.compute_infer.ns + batch.compute_output.ns for batch in model.batch_stats
            ),
        )
        previous = counters.get(model.name)
        counters[model.name] = current if previous is None else _add(previous, current)
    return counters


def _add(first: ModelCounters, second: ModelCounters) -> ModelCounters:
    return ModelCounters(**{name: value + getattr(second, name) for name, value in asdict(first).items()})


def step_times(before: dict[str, ModelCounters], after: dict[str, ModelCounters], models: list[str]) -> list[StepTime]:
    """Per-request averages of ``models`` between two snapshots; models without requests in between are left out."""
    times = []
    for model in models:
        if model not in after:
            continue
        delta = after[model] - before[model] if model in before else after[model]
        if delta.requests <= 0:
            continue
        per_request = NS_PER_MS * delta.requests
        times.append(
            StepTime(
                model=model,
                requests=delta.requests,
                inferences_per_request=delta.inferences / delta.requests if delta.inferences else 1.0,
                average_batch=delta.inferences / delta.executions if delta.executions else 0.0,
                request_ms=delta.request_ns / per_request,
                queue_ms=delta.queue_ns / per_request,
                compute_input_ms=delta.compute_input_ns / per_request,
                compute_infer_ms=delta.compute_infer_ns / per_request,
                compute_output_ms=delta.compute_output_ns / per_request,
                busy_ms=delta.busy_ns / per_request,
            )
        )
    return times
