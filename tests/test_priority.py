"""Request priorities on the real server: live frames are served ahead of backfill from archives."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from alpr import spec
from alpr.client import PlateRecogniser
from alpr.serving.repository import read_config

LOAD_CLIENTS = 8
SAMPLES = 4


def test_every_queue_has_the_two_levels_and_live_is_the_default(served_pipeline) -> None:
    for config_path in sorted(served_pipeline.repository.glob("*/config.pbtxt")):
        config: mc.ModelConfig = read_config(config_path)
        if not config.HasField("dynamic_batching"):
            continue
        assert config.dynamic_batching.priority_levels == len(spec.PRIORITIES), config.name
        assert config.dynamic_batching.default_priority_level == spec.PRIORITIES["live"], config.name


def test_an_unknown_priority_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="priority must be one of"):
        PlateRecogniser("127.0.0.1:9", priority="urgent")


def test_live_requests_overtake_backfill_under_overload(served_pipeline, test_images) -> None:
    """While backfill clients keep every queue full, a live request waits less than a backfill one sent alike."""
    frame = test_images[0]  # 1080p: the detector's five views are the work
    probe = test_images[-1]
    stop = threading.Event()

    def backfill() -> None:
        with PlateRecogniser(served_pipeline.grpc_url, priority="backfill", retries=20, timeout_s=300) as recogniser:
            while not stop.is_set():
                recogniser.recognise(frame)

    def latency(recogniser: PlateRecogniser) -> float:
        started = time.monotonic()
        recogniser.recognise(probe)
        return time.monotonic() - started

    load = [threading.Thread(target=backfill, daemon=True) for _ in range(LOAD_CLIENTS)]
    for thread in load:
        thread.start()
    try:
        time.sleep(5.0)  # the queues fill
        live, backfilled = [], []
        with (
            PlateRecogniser(served_pipeline.grpc_url, priority="live", retries=20, timeout_s=300) as first,
            PlateRecogniser(served_pipeline.grpc_url, priority="backfill", retries=20, timeout_s=300) as second,
        ):
            for _ in range(SAMPLES):  # alternated, so that a change in load hits both alike
                live.append(latency(first))
                backfilled.append(latency(second))
    finally:
        stop.set()
        for thread in load:
            thread.join()
    assert statistics.median(live) < statistics.median(backfilled), (live, backfilled)
