"""The Python client and the ``lpr`` command: local validation, both client flavours and the CLI on the real server."""

from __future__ import annotations

import asyncio
import json

import cv2
import numpy as np
import pytest

from alpr import spec
from alpr.cli import expand_sources
from alpr.cli import main as lpr
from alpr.client import AsyncPlateRecogniser, Plate, PlateRecogniser, prepare_image
from alpr.synth.dataset import HELDOUT_SEED, HELDOUT_SIZES, iter_scenes

# Nothing listens here: calls that validate locally must fail before any connection is tried.
UNREACHABLE_URL = "127.0.0.1:9"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "must be uint8"),
        (np.zeros((64, 64), np.uint8), "HxWx3 BGR.*convert=True"),
        (np.zeros((64, 64, 1), np.uint8), "HxWx3 BGR"),
        (np.zeros((64, 64, 4), np.uint8), "HxWx3 BGR"),
        (np.zeros((0, 0, 3), np.uint8), r"sides must lie in \[16, 4096\]"),
        (np.zeros((8, 64, 3), np.uint8), r"got 8x64"),
        (np.zeros((16, spec.MAX_IMAGE_SIDE + 1, 3), np.uint8), r"got 16x4097"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_prepare_image_refuses_what_the_service_refuses(image, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_image(image)


def test_prepare_image_converts_grayscale_and_bgra_only_when_asked() -> None:
    gray = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80).astype(np.uint8)
    for image in (gray, gray[..., None]):
        converted = prepare_image(image, convert=True)
        assert converted.shape == (64, 80, 3)
        np.testing.assert_array_equal(converted[..., 1], gray)
    bgra = np.dstack([gray, gray // 2, gray // 3, np.full_like(gray, 255)])
    np.testing.assert_array_equal(prepare_image(bgra, convert=True), bgra[..., :3])
    with pytest.raises(ValueError, match="must be uint8"):
        prepare_image(gray.astype(np.float32), convert=True)


def test_prepare_image_returns_a_contiguous_array() -> None:
    image = np.zeros((64, 96, 3), np.uint8)[:, ::2]
    assert prepare_image(image).flags["C_CONTIGUOUS"]


def test_recogniser_validates_before_sending() -> None:
    with PlateRecogniser(UNREACHABLE_URL) as recogniser, pytest.raises(ValueError, match="must be uint8"):
        recogniser.recognise(np.zeros((64, 64, 3), np.float64))


def test_plate_to_dict_is_json_ready() -> None:
    plate = Plate(box=(1.234, 2.0, 30.5, 12.25), det_score=0.91234567, text="B840CK197", text_score=0.5)
    assert json.loads(json.dumps(plate.to_dict())) == {
        "box": [1.23, 2.0, 30.5, 12.25],
        "det_score": 0.9123,
        "text": "B840CK197",
        "text_score": 0.5,
    }


@pytest.mark.server
def test_sync_and_async_clients_agree_with_each_other(served_pipeline, test_images) -> None:
    with PlateRecogniser(served_pipeline.grpc_url, retries=8) as recogniser:
        expected = [recogniser.recognise(image) for image in test_images]
    assert any(expected), "no test image produced a plate"
    assert expected[0] == []  # the uniform grey image

    async def recognise_all() -> list[list[Plate]]:
        async with AsyncPlateRecogniser(served_pipeline.grpc_url, retries=8) as recogniser:
            return list(await asyncio.gather(*(recogniser.recognise(image) for image in test_images)))

    for plates, reference in zip(asyncio.run(recognise_all()), expected, strict=True):
        assert [p.text for p in plates] == [p.text for p in reference]
        np.testing.assert_allclose([p.box for p in plates], [p.box for p in reference], atol=1e-3)


@pytest.mark.server
def test_recogniser_converts_grayscale_when_asked(served_pipeline) -> None:
    gray = np.full((240, 320), 128, np.uint8)
    with PlateRecogniser(served_pipeline.grpc_url, convert=True) as recogniser:
        assert recogniser.recognise(gray) == recogniser.recognise(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))


def write_video(path, frames: list[np.ndarray]) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG videos here"
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_expand_sources_takes_files_folders_and_globs(tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.png", "a/notes.txt", "3.jpg", "clip.avi"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_sources([str(tmp_path / "a"), str(tmp_path / "*.jpg"), str(tmp_path / "clip.avi")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.jpg", "a/b/2.png", "3.jpg", "clip.avi"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_sources([str(tmp_path / "nothing-here*.jpg")])


@pytest.mark.server
def test_lpr_prints_one_json_line_per_image_and_frame(served_pipeline, test_images, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), test_images[0])
    cv2.imwrite(str(folder / "blotched.png"), test_images[1])
    (folder / "broken.jpg").write_bytes(b"not an image")
    frames = [cv2.resize(test_images[i], (320, 240)) for i in range(1, 6)]
    write_video(tmp_path / "clip.avi", frames)
    annotated = tmp_path / "annotated"

    status = lpr(
        [
            str(folder),
            str(tmp_path / "clip.avi"),
            "--url",
            served_pipeline.grpc_url,
            "--concurrency",
            "3",
            "--video-stride",
            "2",
            "--annotate-dir",
            str(annotated),
        ]
    )

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1  # broken.jpg
    sources = [(r["source"].rsplit("/", 1)[-1], r.get("frame")) for r in records]
    assert sources == [
        ("blotched.png", None),
        ("broken.jpg", None),
        ("grey.png", None),
        ("clip.avi", 0),
        ("clip.avi", 2),
        ("clip.avi", 4),
    ]
    assert "error" in records[1] and "plates" not in records[1]
    assert records[2]["plates"] == []
    with PlateRecogniser(served_pipeline.grpc_url) as recogniser:
        expected = [plate.to_dict() for plate in recogniser.recognise(test_images[1])]
    assert [p["text"] for p in records[0]["plates"]] == [p["text"] for p in expected]
    assert sorted(p.name for p in annotated.iterdir()) == [
        "blotched.jpg",
        "clip_000000.jpg",
        "clip_000002.jpg",
        "clip_000004.jpg",
        "grey.jpg",
    ]


def test_lpr_refuses_a_text_score_floor_outside_zero_to_one(tmp_path, capsys) -> None:
    assert lpr([str(tmp_path), "--url", UNREACHABLE_URL, "--min-text-score", "1.5"]) == 2
    assert "--min-text-score" in capsys.readouterr().err


@pytest.mark.server
def test_lpr_leaves_out_plates_below_the_text_score_floor(served_pipeline, tmp_path, capsys) -> None:
    scene = next(s for s in iter_scenes(HELDOUT_SEED, 40, HELDOUT_SIZES) if len(s.plates) >= 3)
    cv2.imwrite(str(tmp_path / "scene.png"), scene.image)
    with PlateRecogniser(served_pipeline.grpc_url) as recogniser:
        answered = recogniser.recognise(scene.image)
    scores = sorted(plate.text_score for plate in answered)
    assert len(set(scores)) >= 2, "the scene should give plates with different text scores"
    floor = scores[len(scores) // 2]  # keeps the upper half, drops at least the lowest plate

    assert lpr([str(tmp_path / "scene.png"), "--url", served_pipeline.grpc_url, "--min-text-score", str(floor)]) == 0
    kept = json.loads(capsys.readouterr().out)["plates"]
    assert [p["text"] for p in kept] == [p.text for p in answered if p.text_score >= floor]
    assert 0 < len(kept) < len(answered)
