"""Shared fixtures. ``served_pipeline`` starts the real Triton server once per session on free ports.

The server serves a CPU repository generated into a temporary folder from freshly exported graphs: the committed
weights ``alpr/weights/*.pt`` when all three are present, else seeded untrained networks. An untrained detector
scores every image around 0.4, so no image would ever come out without plates; its graph is exported with a
confidence threshold of ``UNTRAINED_CONFIDENCE`` instead, at which a uniform image has no detection and an image with
dark blotches has a few. Nothing else differs from the production export.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from alpr import spec
from alpr.paths import repo_root, shared_dir

UNTRAINED_CONFIDENCE = 0.9
NETWORKS = ("detector", "stn", "lprnet")


@dataclass(frozen=True)
class ServedPipeline:
    """A running server with the ensemble, and what it was built from."""

    grpc_url: str
    http_url: str
    onnx_dir: Path
    repository: Path
    server_pid: int
    # True when the graphs hold the committed trained weights, False for untrained networks.
    trained: bool


def committed_weights_present() -> bool:
    weights = repo_root() / "alpr" / "weights"
    return all((weights / f"{name}.pt").is_file() for name in NETWORKS)


def export_test_graphs(out_dir: Path) -> bool:
    """Export the five graphs into ``out_dir``; returns whether they hold trained weights."""
    if str(repo_root()) not in sys.path:
        sys.path.insert(0, str(repo_root()))
    import torch

    from export.to_onnx import export_all, load_networks, served_graphs

    torch.set_num_threads(1)
    trained = committed_weights_present()
    networks = load_networks(random_init=not trained)
    confidence = spec.DETECTOR_CONFIDENCE if trained else UNTRAINED_CONFIDENCE
    export_all(out_dir, served_graphs(networks, spec.MAX_PLATES, confidence=confidence))
    return trained


@pytest.fixture(scope="session")
def served_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPipeline]:
    """The real tritonserver serving the CPU repository; skipped only when no tritonserver is installed."""
    from alpr.serving.repository import write_repository
    from alpr.serving.server import TritonNotFoundError, TritonServer, find_installation

    try:
        find_installation()
    except TritonNotFoundError as error:
        pytest.skip(f"tritonserver binary absent: {error}")
    workdir = tmp_path_factory.mktemp("serving")
    onnx_dir = workdir / "onnx"
    trained = export_test_graphs(onnx_dir)
    repository = write_repository(workdir / "model_repository", "cpu", models_dir=onnx_dir)
    server = TritonServer(
        repository, build_dir=workdir / "triton", log_path=workdir / "tritonserver.log", startup_timeout_s=300
    )
    with server:
        endpoints = server.endpoints
        assert server.process is not None
        yield ServedPipeline(endpoints.grpc_url, endpoints.http_url, onnx_dir, repository, server.process.pid, trained)


def blotched_image(rng: np.random.Generator) -> np.ndarray:
    """A grey BGR image of random size with a few dark rectangles: something for a detector to answer."""
    height, width = int(rng.integers(240, 1100)), int(rng.integers(320, 1960))
    image = np.full((height, width, 3), 128, np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        h, w = int(rng.integers(16, 80)), int(rng.integers(48, 240))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        image[y : y + h, x : x + w] = rng.integers(0, 40, 3, dtype=np.uint8)
    return image


@pytest.fixture(scope="session")
def test_images() -> list[np.ndarray]:
    """Sixteen varied BGR images: uniform grey, blotched grey, noise, and the real car photo when available."""
    rng = np.random.default_rng(7)
    images = [np.full((1080, 1920, 3), 128, np.uint8)]
    images += [blotched_image(rng) for _ in range(13)]
    images.append(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    car = shared_dir() / "real" / "car.jpg"
    if car.is_file():
        import cv2

        images.append(cv2.imread(str(car), cv2.IMREAD_COLOR))
    else:
        images.append(blotched_image(rng))
    return images
