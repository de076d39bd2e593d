"""Encoded image files: ``alpr.image_files`` and the ensemble ``plate_recognition_encoded`` on the real server."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from triton_requests import assert_same_plates, infer
from tritonclient.utils import InferenceServerException

from alpr import spec
from alpr.cli import main as lpr
from alpr.client import PlateRecogniser
from alpr.image_files import ImageFileError, declared_size, decode_image_file
from alpr.paths import shared_dir


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` and whose pixel data is a few bytes: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def encoded(image: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


SAMPLE = np.random.default_rng(5).integers(0, 256, (120, 200, 3), dtype=np.uint8)

BAD_FILES = {
    "empty": (b"", r"empty image file"),
    "text": (b"plate: A123BC77", r"not an image file \(JPEG, PNG, WebP, BMP or TIFF expected\)"),
    "truncated_jpeg": (encoded(SAMPLE, ".jpg")[:150], r"damaged image file"),
    "truncated_png": (encoded(SAMPLE, ".png")[:120], r"damaged"),
    "too_wide": (png_header_only(5000, 100), r"sides must lie in \[16, 4096\], the file declares 5000x100"),
    "too_small": (png_header_only(8, 8), r"the file declares 8x8"),
    "bomb": (png_header_only(100_000, 100_000), r"too many pixels"),
}


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_decoding_is_what_imread_reads(suffix: str, tmp_path) -> None:
    data = encoded(SAMPLE, suffix)
    (tmp_path / f"sample{suffix}").write_bytes(data)
    decoded = decode_image_file(data)
    assert np.array_equal(decoded, cv2.imread(str(tmp_path / f"sample{suffix}"), cv2.IMREAD_COLOR))
    assert declared_size(data) == (200, 120)


def test_grayscale_and_alpha_files_decode_to_three_channels() -> None:
    assert decode_image_file(encoded(SAMPLE[..., 0], ".png")).shape == (120, 200, 3)
    assert decode_image_file(encoded(cv2.cvtColor(SAMPLE, cv2.COLOR_BGR2BGRA), ".png")).shape == (120, 200, 3)


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_files_are_refused_before_decoding(case: str) -> None:
    data, message = BAD_FILES[case]
    with pytest.raises(ImageFileError, match=message):
        decode_image_file(data)


def test_served_files_answer_as_their_pixels(served_pipeline, test_images) -> None:
    files = [encoded(image, ".png") for image in test_images[1:5]]
    files += [encoded(image, ".jpg") for image in test_images[5:8]]
    car = shared_dir() / "real" / "car.jpg"
    if car.is_file():
        files.append(car.read_bytes())
    with PlateRecogniser(served_pipeline.grpc_url) as recogniser:
        for data in files:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert_same_plates(recogniser.recognise_file(data), recogniser.recognise(pixels))


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_served_bad_files_get_invalid_argument_and_the_server_keeps_serving(served_pipeline, case: str) -> None:
    data, message = BAD_FILES[case]
    with pytest.raises(InferenceServerException, match=message) as error:
        infer(served_pipeline.grpc_url, spec.ENCODED_ENSEMBLE_NAME, {"encoded": (np.array([data], object), "BYTES")})
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    with PlateRecogniser(served_pipeline.grpc_url) as recogniser:
        assert recogniser.recognise_file(encoded(np.full((480, 640, 3), 128, np.uint8), ".png")) == []


@pytest.mark.parametrize(
    ("tensor", "datatype", "message"),
    [
        (np.array([b"a", b"b"], object), "BYTES", r"unexpected shape for input 'encoded'"),
        (np.zeros(1, np.uint8), "UINT8", r"expects 'BYTES'"),
    ],
    ids=["two_files", "not_bytes"],
)
def test_served_encoded_input_of_the_wrong_kind_is_refused(served_pipeline, tensor, datatype, message) -> None:
    with pytest.raises(InferenceServerException, match=message) as error:
        infer(served_pipeline.grpc_url, spec.ENCODED_ENSEMBLE_NAME, {"encoded": (tensor, datatype)})
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_lpr_sends_files_by_default_and_pixels_when_asked(served_pipeline, test_images, tmp_path, capsys) -> None:
    for index in range(1, 4):
        cv2.imwrite(str(tmp_path / f"{index}.jpg"), test_images[index])
    answers = {}
    for send in ("file", "pixels"):
        assert lpr([str(tmp_path), "--url", served_pipeline.grpc_url, "--send", send, "--quiet"]) == 0
        answers[send] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[p["text"] for p in r["plates"]] for r in answers["file"]] == [
        [p["text"] for p in r["plates"]] for r in answers["pixels"]
    ]
    for by_file, by_pixels in zip(answers["file"], answers["pixels"], strict=True):
        for plate_file, plate_pixels in zip(by_file["plates"], by_pixels["plates"], strict=True):
            np.testing.assert_allclose(plate_file["box"], plate_pixels["box"], atol=0.02)
