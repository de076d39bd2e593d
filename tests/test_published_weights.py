"""The published STN and LPRNet checkpoints, exported and served by the real Triton server, read the real car photo.

The graphs are exported as ``make engines LPRNET_WEIGHTS=... STN_WEIGHTS=...`` exports them (the detector is the
committed one when present, else the seeded untrained one) and served from a CPU repository. The recogniser path is
driven step by step over gRPC (``crop`` with the reference box, then ``stn``, then ``lprnet``) and compared with the
in-process PyTorch reference ``TorchPipeline.read_boxes``; the whole ensemble answers the same photo well-formed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from triton_requests import infer

from alpr import spec
from alpr.ctc import decode_with_confidence
from alpr.paths import default_weights, published_weights, shared_dir
from alpr.vocab import BLANK, CHARS

pytestmark = pytest.mark.server

# What the published checkpoints read on car.jpg: the plate, and the borderline third character (../shared/real).
ACCEPTED_READINGS = ("B840CK197", "B840OK197")
# The served graphs run the same float32 operations as PyTorch, in another order: rounding differences only.
LOGITS_ATOL = 1e-4
TEXT_SCORE_RTOL = 1e-4
# The letterbox maps a box to the canvas and back without rounding, up to float32 arithmetic.
BOX_ROUND_TRIP_ATOL_PX = 0.01
DETECTION_SCORE = 0.9


@dataclass(frozen=True)
class RealPlate:
    """The car photo (BGR) and its readable plate's reference box in original-image pixels."""

    image: np.ndarray
    box: np.ndarray  # float32 [1, 4]


@dataclass(frozen=True)
class ServedRecogniser:
    """A running server with the published recogniser weights, and the PyTorch modules it was exported from."""

    grpc_url: str
    max_plates: int
    stn: torch.nn.Module
    lprnet: torch.nn.Module
    detector: torch.nn.Module


@pytest.fixture(scope="module")
def real_plate() -> RealPlate:
    import cv2

    real = shared_dir() / "real"
    if not (real / "car.jpg").is_file() or not (real / "labels.json").is_file():
        pytest.skip(f"real photo or its labels absent in {real}")
    image = cv2.imread(str(real / "car.jpg"), cv2.IMREAD_COLOR)
    (plate,) = json.loads((real / "labels.json").read_text())["car.jpg"]["plates"]
    return RealPlate(image, np.array([plate["box_xyxy"]], np.float32))


@pytest.fixture(scope="module")
def served_recogniser(tmp_path_factory: pytest.TempPathFactory, real_plate: RealPlate) -> Iterator[ServedRecogniser]:
    """The real tritonserver serving a CPU repository exported with the published STN and LPRNet checkpoints."""
    from alpr.serving.repository import write_repository
    from alpr.serving.server import TritonNotFoundError, TritonServer, find_installation
    from export.to_onnx import export_all, load_networks, served_graphs

    stn_weights, lprnet_weights = published_weights("stn"), published_weights("lprnet")
    if not stn_weights.is_file() or not lprnet_weights.is_file():
        pytest.skip(f"published weights absent: {stn_weights}, {lprnet_weights}")
    try:
        find_installation()
    except TritonNotFoundError as error:
        pytest.skip(f"tritonserver binary absent: {error}")
    torch.set_num_threads(1)
    networks = load_networks(
        lprnet_weights=lprnet_weights,
        stn_weights=stn_weights,
        random_init=not default_weights("detector").is_file(),
    )
    workdir = tmp_path_factory.mktemp("published")
    onnx_dir = workdir / "onnx"
    export_all(onnx_dir, served_graphs(networks, spec.MAX_PLATES))
    repository = write_repository(workdir / "model_repository", "cpu", models_dir=onnx_dir)
    server = TritonServer(
        repository, build_dir=workdir / "triton", log_path=workdir / "tritonserver.log", startup_timeout_s=300
    )
    with server:
        url = server.endpoints.grpc_url
        client = grpcclient.InferenceServerClient(url)
        try:
            config = client.get_model_config("detector", as_json=True)["config"]
        finally:
            client.close()
        (det_boxes,) = [output for output in config["output"] if output["name"] == "det_boxes"]
        max_plates = int(det_boxes["dims"][0])
        yield ServedRecogniser(url, max_plates, networks.stn, networks.lprnet, networks.detector)


@dataclass(frozen=True)
class ServedReading:
    """What the served crop, stn and lprnet steps answer for the reference box."""

    plate_boxes: np.ndarray
    plate_scores: np.ndarray
    logits: np.ndarray


@pytest.fixture(scope="module")
def served_reading(served_recogniser: ServedRecogniser, real_plate: RealPlate) -> ServedReading:
    """The reference box sent as the detector would send it, through the served recogniser steps one by one."""
    from alpr.geometry import detections_for_boxes

    height, width = real_plate.image.shape[:2]
    num_dets, det_boxes, det_scores = detections_for_boxes(
        real_plate.box, height, width, served_recogniser.max_plates, DETECTION_SCORE
    )
    url = served_recogniser.grpc_url
    crops, plate_boxes, plate_scores = infer(
        url,
        "crop",
        {
            "image": (real_plate.image, "UINT8"),
            "num_dets": (num_dets, "INT32"),
            "det_boxes": (det_boxes, "FP32"),
            "det_scores": (det_scores, "FP32"),
        },
        ("crops", "plate_boxes", "plate_scores"),
    ).values()
    rectified = infer(url, "stn", {"crops": (crops, "FP32")}, ("rectified",))["rectified"]
    logits = infer(url, "lprnet", {"rectified": (rectified, "FP32")}, ("logits",))["logits"]
    return ServedReading(plate_boxes, plate_scores, logits)


def test_served_crop_returns_the_reference_box(served_reading: ServedReading, real_plate: RealPlate) -> None:
    np.testing.assert_allclose(served_reading.plate_boxes, real_plate.box, rtol=0, atol=BOX_ROUND_TRIP_ATOL_PX)
    np.testing.assert_array_equal(
        served_reading.plate_scores, np.full(len(real_plate.box), DETECTION_SCORE, np.float32)
    )


def test_served_recogniser_matches_the_torch_reference(
    served_recogniser: ServedRecogniser, served_reading: ServedReading, real_plate: RealPlate
) -> None:
    from alpr.geometry import crop_plates
    from alpr.pipeline import TorchPipeline

    reference = TorchPipeline(served_recogniser.detector, served_recogniser.stn, served_recogniser.lprnet)
    with torch.no_grad():
        expected_logits = reference.lprnet(reference.stn(crop_plates(real_plate.image, real_plate.box))).numpy()
    assert served_reading.logits.shape == (len(real_plate.box), len(CHARS), spec.LPRNET_STEPS)
    np.testing.assert_allclose(served_reading.logits, expected_logits, rtol=0, atol=LOGITS_ATOL)

    texts, text_scores = decode_with_confidence(served_reading.logits)
    expected_texts, expected_scores = reference.read_boxes(real_plate.image, real_plate.box)
    assert texts == expected_texts
    np.testing.assert_allclose(text_scores, expected_scores, rtol=TEXT_SCORE_RTOL)


def test_published_weights_read_the_real_plate(served_reading: ServedReading) -> None:
    (text,), (text_score,) = decode_with_confidence(served_reading.logits)
    assert text in ACCEPTED_READINGS
    assert 0.0 < text_score <= 1.0


def test_ensemble_answers_the_real_photo_well_formed(
    served_recogniser: ServedRecogniser, real_plate: RealPlate
) -> None:
    boxes, det_scores, texts, text_scores = infer(
        served_recogniser.grpc_url,
        spec.ENSEMBLE_NAME,
        {"image": (real_plate.image, "UINT8")},
    ).values()
    plates = len(texts)
    assert 0 <= plates <= served_recogniser.max_plates
    assert boxes.shape == (plates, 4) and boxes.dtype == np.float32
    assert det_scores.shape == (plates,) and text_scores.shape == (plates,)
    height, width = real_plate.image.shape[:2]
    assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= width) and np.all(boxes[:, [1, 3]] <= height)
    assert np.all((det_scores > 0) & (det_scores <= 1)) and np.all((text_scores >= 0) & (text_scores <= 1))
    assert all(set(text.decode()) <= set(CHARS) - {BLANK} for text in texts)
