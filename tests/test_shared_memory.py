"""Images sent through shared memory: same answers as the gRPC payload, regions that grow and are released."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from alpr.cli import main as lpr
from alpr.client import AsyncPlateRecogniser, Plate, PlateRecogniser, SharedMemoryError, region_byte_size

# Nothing listens here: options refused at construction must fail before any connection is tried.
UNREACHABLE_URL = "127.0.0.1:9"
CONCURRENT_CALLS = 8


def registered_regions(grpc_url: str, prefix: str) -> dict[str, int]:
    """The system shared-memory regions the server holds whose name starts with ``prefix``: name -> byte size."""
    with grpcclient.InferenceServerClient(grpc_url) as client:
        status = client.get_system_shared_memory_status()
    return {region.name: region.byte_size for region in status.regions.values() if region.name.startswith(prefix)}


def growing_images(test_images: list[np.ndarray]) -> list[np.ndarray]:
    """A small image first, then bigger ones (the 1080p frame among them), then a small one again."""
    small = min(test_images, key=lambda image: image.nbytes)
    largest = max(test_images, key=lambda image: image.nbytes)
    assert region_byte_size(largest.nbytes) > region_byte_size(small.nbytes), "no image would make a region grow"
    return [small, *test_images[1:5], largest, test_images[-1], small]


def assert_same_plates(plates: list[Plate], reference: list[Plate]) -> None:
    """Same texts; boxes and scores equal up to the rounding that another batch composition may bring."""
    assert [p.text for p in plates] == [p.text for p in reference]
    np.testing.assert_allclose([p.box for p in plates], [p.box for p in reference], atol=1e-3)
    np.testing.assert_allclose([p.det_score for p in plates], [p.det_score for p in reference], atol=1e-4)
    np.testing.assert_allclose([p.text_score for p in plates], [p.text_score for p in reference], atol=1e-4)


@pytest.fixture(scope="module")
def plain_plates(served_pipeline, test_images) -> list[list[Plate]]:
    """Plates of every test image sent sequentially in the gRPC payload: the reference."""
    with PlateRecogniser(served_pipeline.grpc_url, retries=8) as recogniser:
        plates = [recogniser.recognise(image) for image in test_images]
    assert any(plates), "no test image produced a plate"
    return plates


def test_unknown_shared_memory_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"none, system, cuda.*'gpu'"):
        PlateRecogniser(UNREACHABLE_URL, shared_memory="gpu")


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this host has an NVIDIA GPU")
@pytest.mark.parametrize("recogniser_class", [PlateRecogniser, AsyncPlateRecogniser])
def test_cuda_shared_memory_without_a_gpu_fails_at_construction(recogniser_class) -> None:
    with pytest.raises(SharedMemoryError, match="shared_memory='cuda' needs an NVIDIA GPU"):
        recogniser_class(UNREACHABLE_URL, shared_memory="cuda")


@pytest.mark.server
def test_system_shared_memory_gives_the_plates_of_the_grpc_payload(served_pipeline, test_images, plain_plates) -> None:
    images = growing_images(test_images)
    expected = [plain_plates[next(i for i, known in enumerate(test_images) if known is image)] for image in images]
    assert any(expected)
    with PlateRecogniser(served_pipeline.grpc_url, retries=8, shared_memory="system") as recogniser:
        prefix = recogniser.regions.prefix
        for image, reference in zip(images, expected, strict=True):
            assert recogniser.recognise(image) == reference
        # One caller at a time needs one region, grown for the 1080p frame; the small one it replaced is gone.
        regions = registered_regions(served_pipeline.grpc_url, prefix)
        assert list(regions.values()) == [region_byte_size(max(image.nbytes for image in images))]
        assert all(Path("/dev/shm", name).exists() for name in regions)
    assert registered_regions(served_pipeline.grpc_url, prefix) == {}
    assert not any(Path("/dev/shm", name).exists() for name in regions)


@pytest.mark.server
def test_async_system_shared_memory_with_concurrent_calls(served_pipeline, test_images, plain_plates) -> None:
    images = test_images[-CONCURRENT_CALLS:]
    expected = plain_plates[-CONCURRENT_CALLS:]
    assert any(expected)

    async def recognise_concurrently() -> tuple[list[list[Plate]], dict[str, int], str]:
        async with AsyncPlateRecogniser(served_pipeline.grpc_url, retries=8, shared_memory="system") as recogniser:
            plates = await asyncio.gather(*(recogniser.recognise(image) for image in images))
            return (
                list(plates),
                registered_regions(served_pipeline.grpc_url, recogniser.regions.prefix),
                recogniser.regions.prefix,
            )

    plates, regions_while_open, prefix = asyncio.run(recognise_concurrently())
    for answer, reference in zip(plates, expected, strict=True):
        assert_same_plates(answer, reference)
    assert len(regions_while_open) == CONCURRENT_CALLS  # one region per call in flight
    assert registered_regions(served_pipeline.grpc_url, prefix) == {}
    assert not any(Path("/dev/shm", name).exists() for name in regions_while_open)


@pytest.mark.server
def test_lpr_passes_shared_memory_through(served_pipeline, test_images, plain_plates, tmp_path, capsys) -> None:
    for index in (1, 2):
        cv2.imwrite(str(tmp_path / f"{index}.png"), test_images[index])
    status = lpr([str(tmp_path), "--url", served_pipeline.grpc_url, "--shared-memory", "system", "--quiet"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [[plate["text"] for plate in record["plates"]] for record in records] == [
        [plate.text for plate in plain_plates[index]] for index in (1, 2)
    ]
