"""The synthetic data generator: plate texts and images, scenes, data set files, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from alpr.paths import shared_dir
from alpr.synth import fonts, scenes
from alpr.synth.dataset import (
    iter_scenes,
    plate_box,
    plate_samples,
    scene_at,
    write_dataset,
)
from alpr.synth.plates import (
    ANY_PLATE_PATTERN,
    FORMATS_BY_NAME,
    PLATE_FORMATS,
    PlateText,
    random_plate_text,
    render_plate,
)
from alpr.synth.scenes import make_scene
from alpr.vocab import CHARS, LETTERS

SMALL_SIZES = ((240, 320), (180, 180))
TYPE1 = re.compile(rf"[{LETTERS}]\d{{3}}[{LETTERS}]{{2}}\d{{2,3}}")


def test_texts_follow_gost_formats_with_type1_the_majority() -> None:
    rng = np.random.default_rng(0)
    texts = [random_plate_text(rng) for _ in range(2000)]
    for plate_text in texts:
        assert plate_text.plate_format.pattern.fullmatch(plate_text.text), plate_text
        assert ANY_PLATE_PATTERN.fullmatch(plate_text.text)
        assert set(plate_text.text) <= set(CHARS[:-1])
        assert plate_text.region not in {"00", "000"}
        digits = "".join(c for c in plate_text.main if c.isdigit())
        assert set(digits) != {"0"}, "registration numbers start at 001"
    type1 = [t for t in texts if t.plate_format.name == "type1"]
    assert len(type1) > 0.75 * len(texts)
    assert all(TYPE1.fullmatch(t.text) for t in type1)
    assert {len(t.region) for t in type1} == {2, 3}
    assert {t.plate_format.name for t in texts} == {f.name for f in PLATE_FORMATS}


def test_rendered_plate_is_white_with_dark_characters_where_expected() -> None:
    plate = render_plate(PlateText(FORMATS_BY_NAME["type1"], "B840CK", "197"))
    assert plate.shape == (112, 520, 3) and plate.dtype == np.uint8
    grey = cv2.cvtColor(plate, cv2.COLOR_BGR2GRAY)
    assert np.median(grey) > 200, "mostly white background"
    main_part, region = grey[15:95, 20:370], grey[8:62, 400:510]
    assert (main_part < 80).mean() > 0.1 and (region < 80).mean() > 0.1, "ink in the main part and the region code"
    # Letters are lower than digits: the topmost ink of the first letter is below that of the first digit.
    first_letter, first_digit = grey[8:100, 35:68] < 80, grey[8:100, 95:130] < 80
    assert first_letter.any(axis=1).argmax() > first_digit.any(axis=1).argmax() + 8


def test_different_texts_render_differently_and_rendering_is_deterministic() -> None:
    a = PlateText(FORMATS_BY_NAME["type1"], "A001AA", "77")
    b = PlateText(FORMATS_BY_NAME["type1"], "A001AA", "78")
    assert not np.array_equal(render_plate(a), render_plate(b))
    varied = [render_plate(a, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(*varied)
    assert not np.array_equal(varied[0], render_plate(a, np.random.default_rng(6)))


def _scene_bytes(seed: int) -> tuple[bytes, list]:
    scene = make_scene(np.random.default_rng(seed), 240, 320, 3)
    return scene.image.tobytes(), [(p.box_xyxy, p.corners.tobytes(), p.text) for p in scene.plates]


def test_scenes_are_deterministic() -> None:
    assert _scene_bytes(7) == _scene_bytes(7)
    assert _scene_bytes(7)[0] != _scene_bytes(8)[0]
    # Item k of a data set does not depend on the items before it.
    sequential = list(iter_scenes(3, 3, SMALL_SIZES))
    assert np.array_equal(sequential[2].image, scene_at(3, 2, SMALL_SIZES).image)
    assert np.array_equal(sequential[1].image, next(iter_scenes(3, 1, SMALL_SIZES, start=1)).image)


def test_a_scene_without_camera_effects_is_the_frame_before_the_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, clean = scene_at(5, 4, SMALL_SIZES), scene_at(5, 4, SMALL_SIZES, camera=False)
    assert [(p.box_xyxy, p.text) for p in seen.plates] == [(p.box_xyxy, p.text) for p in clean.plates]
    assert not np.array_equal(seen.image, clean.image)
    frames = []
    monkeypatch.setattr(scenes, "_camera", lambda rng, image, **_: frames.append(image.copy()) or image)
    scene_at(5, 4, SMALL_SIZES)
    assert np.array_equal(frames[0], clean.image)


def test_about_one_plate_in_twelve_is_flagged_as_partly_covered() -> None:
    flags = [plate.occluded for scene in iter_scenes(12, 150, ((96, 128),), empty_share=0.0) for plate in scene.plates]
    assert all(isinstance(flag, bool) for flag in flags)
    assert 0.02 < np.mean(flags) < 0.16, np.mean(flags)


def test_plate_samples_follow_the_requested_width_range() -> None:
    widths = [np.ptp(s.corners[:, 0]) for s in plate_samples(np.random.default_rng(1), 12, widths=(40.0, 50.0))]
    # The quad's extent is the frontal width turned by yaw and perspective: near it, never far above it.
    assert min(widths) >= 0.6 * 40 and max(widths) <= 1.4 * 50


def _boxes_intersect(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_scene_labels_are_tight_boxes_of_quads_inside_the_image_and_never_overlap() -> None:
    plates_seen = 0
    for scene in iter_scenes(11, 12, SMALL_SIZES, max_plates=4, empty_share=0.0):
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape[2] == 3
        for plate in scene.plates:
            plates_seen += 1
            x1, y1, x2, y2 = plate.box_xyxy
            assert plate.corners.shape == (4, 2)
            assert np.allclose(plate_box(plate.corners), plate.box_xyxy)
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            tl, tr, br, bl = plate.corners
            assert tl[0] < tr[0] and bl[0] < br[0] and tl[1] < bl[1] and tr[1] < br[1], "corners are TL, TR, BR, BL"
            assert ANY_PLATE_PATTERN.fullmatch(plate.text)
        for i, a in enumerate(scene.plates):
            for b in scene.plates[i + 1 :]:
                assert not _boxes_intersect(a.box_xyxy, b.box_xyxy)
    assert plates_seen >= 12


def test_plates_are_visible_at_their_labels() -> None:
    """Where a label says a plate is, the image has the plate's contrast: dark characters on a light ground."""
    contrasts = []
    for scene in iter_scenes(21, 6, ((480, 640),), max_plates=2, empty_share=0.0):
        for plate in scene.plates:
            x1, y1, x2, y2 = (round(v) for v in plate.box_xyxy)
            if x2 - x1 < 30:
                continue
            grey = cv2.cvtColor(scene.image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY).astype(np.float32)
            contrasts.append(np.percentile(grey, 90) - np.percentile(grey, 10))
    assert contrasts and np.median(contrasts) > 40


def test_empty_scenes_occur() -> None:
    assert make_scene(np.random.default_rng(0), 120, 160, 0).plates == []
    counts = [len(scene.plates) for scene in iter_scenes(4, 40, ((96, 128),))]
    assert 0 in counts and max(counts) <= 4 and sum(c > 0 for c in counts) > 25


def test_plate_samples_hold_the_plate_inside_a_context_patch() -> None:
    samples = plate_samples(np.random.default_rng(2), 6)
    assert len(samples) == 6
    for sample in samples:
        height, width = sample.image.shape[:2]
        x1, y1, x2, y2 = plate_box(sample.corners)
        assert 0 < x1 < x2 < width and 0 < y1 < y2 < height
        # Room for the serving crop's 20 % extra height above and below.
        assert y1 > 0.2 * (y2 - y1) and height - y2 > 0.2 * (y2 - y1)
        assert 30 <= x2 - x1 <= 300
        assert ANY_PLATE_PATTERN.fullmatch(sample.text)


def _read_yolo(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(len(row) == 5 and row[0] == "0" for row in rows)
    return np.array([[float(v) for v in row[1:]] for row in rows]).reshape(-1, 4)


def test_written_dataset_is_consistent_and_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        write_dataset(out, seed=9, scenes=4, sizes=SMALL_SIZES, plates=3)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "images"]) == 4
    assert len([f for f in files if f.parts[0] == "plates"]) == 3
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    annotations = json.loads((first / "annotations.json").read_text())
    for record in annotations["images"]:
        image = cv2.imread(str(first / record["file"]))
        assert image.shape[:2] == (record["height"], record["width"])
        labels = _read_yolo(first / "labels" / (Path(record["file"]).stem + ".txt"))
        boxes = np.array(record["boxes_xyxy"]).reshape(-1, 4)
        assert len(labels) == len(boxes) == len(record["texts"]) == len(record["occluded"])
        assert np.all((labels > 0) & (labels <= 1))
        w, h = record["width"], record["height"]
        expected = np.stack(
            [(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
             (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], axis=1,
        )  # fmt: skip
        assert np.allclose(labels, expected, atol=1e-5)
    for record in json.loads((first / "plates.json").read_text()):
        patch = cv2.imread(str(first / record["file"]))
        corners = np.array(record["corners"])
        assert corners.shape == (4, 2) and np.all(corners >= 0)
        assert np.all(corners.max(axis=0) < patch.shape[1::-1])
        assert ANY_PLATE_PATTERN.fullmatch(record["text"])


def test_plate_fonts_are_found_and_a_missing_one_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for face in (fonts.MAIN_FACE, fonts.FIGURES_FACE):
        assert fonts.font_path(face).is_file()
    assert fonts.glyph_font_path("6") != fonts.glyph_font_path("8")
    absent = fonts.FontFace("No Such Plate Face", "fonts-no-such-plate", ("/nonexistent/plate.ttf",), "ALPR_NO_SUCH")
    with pytest.raises(fonts.PlateFontNotFoundError, match="fonts-no-such-plate"):
        fonts.font_path(absent)
    monkeypatch.setenv(absent.env, str(fonts.font_path(fonts.MAIN_FACE)))
    assert fonts.font_path.__wrapped__(absent) == fonts.font_path(fonts.MAIN_FACE)


def test_published_recogniser_reads_synthetic_plates() -> None:
    """Realism and label check at once: LPRNet trained on real photos reads most characters of our plates."""
    weights = shared_dir() / "weights"
    if not (weights / "lprnet.pth").is_file() or not (weights / "stn.pth").is_file():
        pytest.skip("published weights not available")
    from alpr.synth.realism import character_error_rate, published_recogniser, read_plates

    lprnet, stn = published_recogniser()
    samples = plate_samples(np.random.default_rng(0), 40)
    predicted = read_plates(samples, lprnet, stn)
    cer = character_error_rate(predicted, [sample.text for sample in samples])
    # Chance level is ~1.0; a misaligned label or text would be near it.
    assert cer < 0.6, cer
