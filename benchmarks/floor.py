"""The in-process floor: the served ONNX graphs called with onnxruntime in one process, without a server.

``alpr.pipeline.OnnxPipeline`` computes what the ensemble computes (same graphs and views, same greedy decoding) and
removes everything serving adds: gRPC, the scheduler, the Python-backend processes and their shared-memory copies. Its
sessions get the onnxruntime thread limit of the served instances (read from the served configs). Concurrency is
driven by client threads sharing the sessions, each sending its next request as soon as the previous one returns,
like perf_analyzer's concurrency mode; nothing is batched across requests. With one intra-op thread per session an
onnxruntime call runs on the calling thread, so concurrent requests run in parallel up to the cores available.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpr import spec
from alpr.pipeline import STEPS, OnnxPipeline
from alpr.serving.repository import read_config
from benchmarks.perf_analyzer import LoadLevel

# Thread parameters of a served step: the cpu target's runner and the native onnxruntime backend name them apart.
INTRA_OP_PARAMETERS = ("intra_op_threads", "intra_op_thread_count")


def served_file(repository: Path, step: str) -> Path:
    """The file the server runs for ``step``: its ONNX graph, or its Python code where the target serves it so."""
    config = read_config(repository / step / "config.pbtxt")
    version = repository / step / spec.MODEL_VERSION
    if config.backend == spec.PYTHON_BACKEND:
        return version / "model.py"
    graph = version / (config.default_model_filename or "model.onnx")
    if graph.suffix != ".onnx" or not graph.is_file():
        raise FileNotFoundError(f"the floor runs ONNX graphs: {graph} is not one (build the cpu repository)")
    return graph


def served_as_graph(repository: Path, step: str) -> bool:
    return served_file(repository, step).suffix == ".onnx"


def served_intra_op_threads(repository: Path) -> int:
    """The onnxruntime intra-op thread limit of the served graph steps (they must agree; 0 means one per core)."""
    limits = set()
    for step in STEPS:
        if not served_as_graph(repository, step):
            continue
        parameters = read_config(repository / step / "config.pbtxt").parameters
        limits.add(next((int(parameters[name].string_value) for name in INTRA_OP_PARAMETERS if name in parameters), 0))
    if len(limits) != 1:
        raise ValueError(f"the served steps use different intra-op thread limits {sorted(limits)}")
    return limits.pop()


def served_tile_grid(repository: Path) -> int:
    """The tile grid of the views drawn by the Python ``preprocess`` step (its config parameter)."""
    parameters = read_config(repository / "preprocess" / "config.pbtxt").parameters
    return int(parameters["tile_grid"].string_value) if "tile_grid" in parameters else spec.TILE_GRID


def floor_pipeline(repository: Path, graphs_dir: Path) -> OnnxPipeline:
    """An ``OnnxPipeline`` doing what ``repository`` serves: its graphs, linked as ``graphs_dir/<step>.onnx``, and
    OpenCV's views where the target serves ``preprocess`` as Python code."""
    graphs_dir.mkdir(parents=True, exist_ok=True)
    for step in STEPS:
        link = graphs_dir / f"{step}.onnx"
        link.unlink(missing_ok=True)
        if served_as_graph(repository, step):
            link.symlink_to(served_file(repository, step).resolve())
    return OnnxPipeline(
        graphs_dir,
        threads=served_intra_op_threads(repository),
        tile_grid=served_tile_grid(repository),
        preprocess_graph=served_as_graph(repository, "preprocess"),
    )


@dataclass(frozen=True)
class FloorMeasurement(LoadLevel):
    """One concurrency level of the floor."""

    requests: int
    # Plates answered per image: what the detector found, which need not equal the plates drawn.
    plates_per_image: float


def measure_floor(
    pipeline: Callable[[np.ndarray], Sized],
    images: Sequence[np.ndarray],
    concurrency: int,
    *,
    duration_s: float,
    warmup_s: float,
    min_requests_per_slot: int = 3,
) -> FloorMeasurement:
    """Drive ``pipeline`` (the in-process pipeline, or any call on one input) with ``concurrency`` closed-loop client
    threads and measure one window after a warm-up.

    The window lasts ``duration_s``, longer if needed until ``min_requests_per_slot * concurrency`` answers have
    arrived in it; throughput and latencies are those of the answers that arrive inside it. Images are taken
    round-robin, like the entries of perf_analyzer's input data.
    """
    if not images:
        raise ValueError("no images to measure with")
    counter = itertools.count()
    stop = threading.Event()
    lock = threading.Lock()
    # (sent, answered, plates) of every request, in answer order.
    answers: list[tuple[float, float, int]] = []
    failures: list[BaseException] = []

    def client() -> None:
        try:
            while not stop.is_set():
                with lock:
                    image = images[next(counter) % len(images)]
                sent = time.perf_counter()
                plates = len(pipeline(image))
                answered = time.perf_counter()
                with lock:
                    answers.append((sent, answered, plates))
        except BaseException as error:  # surfaced in the calling thread below
            failures.append(error)
            stop.set()

    clients = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in clients:
        thread.start()
    time.sleep(warmup_s)
    window_start = time.perf_counter()
    minimum = min_requests_per_slot * concurrency
    while not stop.is_set():
        time.sleep(0.05)
        now = time.perf_counter()
        with lock:
            arrived = sum(1 for _, answered, _ in answers if answered >= window_start)
        if now - window_start >= duration_s and arrived >= minimum:
            break
    window_end = time.perf_counter()
    stop.set()
    for thread in clients:
        thread.join()
    if failures:
        raise RuntimeError("the in-process pipeline failed") from failures[0]
    inside = [(sent, answered, plates) for sent, answered, plates in answers if window_start <= answered <= window_end]
    latencies_ms = np.array([answered - sent for sent, answered, _ in inside]) * 1000.0
    p50, p90, p95, p99 = np.percentile(latencies_ms, [50, 90, 95, 99])
    return FloorMeasurement(
        concurrency=concurrency,
        throughput=len(inside) / (window_end - window_start),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        requests=len(inside),
        plates_per_image=float(np.mean([plates for _, _, plates in inside])),
    )
