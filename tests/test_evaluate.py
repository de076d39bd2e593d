"""``make eval``: its tallies, and that it reproduces the accuracy the README states for the committed weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import committed_weights_present

from alpr import paths, realdata
from alpr.evaluate import (
    AnswerTally,
    ReadingTally,
    evaluate_heldout,
    evaluate_real,
    evaluate_real_split,
    evaluate_without_camera,
    plate_groups,
    width_bin,
)
from alpr.pipeline import PlateReadings, TorchPipeline
from alpr.synth.dataset import HELDOUT_COUNT
from alpr.synth.scenes import PlateInstance, Scene

# Same weights, same seeded scenes: only float rounding on another CPU may flip a borderline plate (1/671 = 0.0015).
README_TOLERANCE = 0.005
README_ANSWERS_TABLE = "| lowest text score kept"
README_ANSWER_ROWS = {
    "answers_read_exactly": "of them, true plates read exactly",
    "plates_read_exactly": "of all plates, read exactly",
}
# README column -> plate group of the report.
README_COLUMNS = {
    "all plates": "all plates",
    "plates 40-80 px wide": "40-80 px",
    "plates 80+ px wide": "80+ px",
    "legible plates": "legible plates",
}


def test_a_missed_plate_counts_as_read_wrong_in_every_character() -> None:
    tally = ReadingTally()
    tally.add("A123BC77", "A123BC77")
    tally.add("", "K456MH199", found=False)
    tally.add("A123BC78", "A123BC77")
    summary = tally.summary()
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["exact_match"] == pytest.approx(1 / 3)
    assert summary["cer"] == pytest.approx((0 + 9 + 1) / (8 + 9 + 8))


def test_answers_kept_above_a_text_score_floor_count_only_true_plates_read_exactly() -> None:
    corners = np.zeros((4, 2), np.float32)
    scene = Scene(
        np.zeros((8, 8, 3), np.uint8),
        [PlateInstance((0, 0, 10, 10), corners, "A123BC77"), PlateInstance((20, 20, 30, 30), corners, "K456MH199")],
    )
    readings = PlateReadings(
        boxes=np.zeros((3, 4), np.float32),
        det_scores=np.ones(3, np.float32),
        texts=["A123BC77", "K456MH190", "A123BC77"],  # right, misread, and a false box that reads a true text
        text_scores=np.array([0.9, 0.5, 0.01], np.float32),
    )
    tally = AnswerTally()
    tally.add(readings, np.array([0, 1]), scene)
    rows = tally.at_floors((0.0, 0.1, 0.6, 0.95))
    assert [row["answers"] for row in rows] == [3, 2, 1, 0]
    assert [row["read_exactly"] for row in rows] == [1, 1, 1, 0]
    assert [row["answers_read_exactly"] for row in rows] == pytest.approx([1 / 3, 1 / 2, 1.0, 0.0])
    assert [row["plates_read_exactly"] for row in rows] == pytest.approx([0.5, 0.5, 0.5, 0.0])


def test_a_plate_counts_as_legible_only_when_wide_enough_and_uncovered() -> None:
    corners = np.zeros((4, 2), np.float32)
    assert plate_groups(PlateInstance((0, 0, 39.9, 9), corners, "A123BC77")) == ["all plates", "0-40 px"]
    assert plate_groups(PlateInstance((0, 0, 40, 9), corners, "A123BC77")) == [
        "all plates",
        "40-80 px",
        "legible plates",
    ]
    covered = PlateInstance((0, 0, 90, 20), corners, "A123BC77", occluded=True)
    assert plate_groups(covered) == ["all plates", "80+ px", "partly covered plates"]


def test_plate_widths_fall_in_one_named_bin() -> None:
    assert width_bin((10.0, 0.0, 49.9, 10.0)) == "0-40 px"
    assert width_bin((0.0, 0.0, 40.0, 10.0)) == "40-80 px"
    assert width_bin((0.0, 0.0, 300.0, 60.0)) == "80+ px"


def test_real_photos_are_skipped_cleanly_where_absent(tmp_path: Path) -> None:
    assert evaluate_real(None, None, tmp_path / "missing") is None  # type: ignore[arg-type]


ACCURACY_DOC = "docs/ACCURACY.md"


def readme_table(header_start: str) -> dict[str, dict[str, float]]:
    """The table of the accuracy doc whose header row starts with ``header_start``: row -> column -> value."""
    lines = (paths.repo_root() / ACCURACY_DOC).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    headers = [cell.strip() for cell in lines[start].strip("|").split("|")][1:]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        label, *values = (cell.strip() for cell in line.strip("|").split("|"))
        table[label] = dict(zip(headers, (float(value) for value in values), strict=True))
    return table


def readme_accuracy_table() -> dict[str, dict[str, float]]:
    """The synthetic held-out table of the accuracy doc."""
    return readme_table("| | all plates")


def readme_detector_summary() -> dict[str, float]:
    text = (paths.repo_root() / ACCURACY_DOC).read_text()
    match = re.search(r"Detector precision\s+([0-9.]+), AP@0\.5 ([0-9.]+)", text)
    assert match, "the accuracy doc no longer states the detector's precision and AP"
    return {"precision": float(match[1]), "map50": float(match[2])}


@pytest.mark.skipif(not committed_weights_present(), reason="no committed weights")
def test_make_eval_reproduces_the_accuracy_the_readme_states() -> None:
    weights = {name: paths.default_weights(name) for name in ("detector", "stn", "lprnet")}
    pipeline = TorchPipeline.from_weights(**weights)
    report = evaluate_heldout(pipeline, HELDOUT_COUNT)
    without_camera = evaluate_without_camera(pipeline, HELDOUT_COUNT)
    rows = {  # README row -> the report's summaries by plate group, and the metric
        "detector recall (IoU 0.5)": (report["end_to_end"], "recall"),
        "plate read exactly, end to end": (report["end_to_end"], "exact_match"),
        "character error rate, end to end": (report["end_to_end"], "cer"),
        "read exactly by the recogniser alone, on the true boxes": (report["recogniser_on_true_boxes"], "exact_match"),
        "the same, on the same scenes without the camera effects": (
            without_camera["recogniser_on_true_boxes"],
            "exact_match",
        ),
    }
    measured = {
        label: {column: groups[group][metric] for column, group in README_COLUMNS.items()}
        for label, (groups, metric) in rows.items()
    }
    stated = readme_accuracy_table()
    for label, columns in measured.items():
        for column, value in columns.items():
            assert stated[label][column] == pytest.approx(value, abs=README_TOLERANCE), (label, column)
    for key, value in readme_detector_summary().items():
        assert value == pytest.approx(report["detector"][key], abs=README_TOLERANCE), key
    answers = readme_table(README_ANSWERS_TABLE)
    for row in report["answers_by_min_text_score"]:
        column = f"{row['min_text_score']:g}"
        assert answers["answers"][column] == pytest.approx(row["answers"], abs=2), column
        for key, label in README_ANSWER_ROWS.items():
            assert answers[label][column] == pytest.approx(row[key], abs=README_TOLERANCE), (label, column)
    assert np.isfinite(report["recogniser_on_true_boxes"]["all plates"]["cer"])


def readme_real_split_cell(measured: str) -> str:
    """The value cell of the README's real-photo row whose "measured" cell is ``measured``."""
    for line in (paths.repo_root() / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1] == measured:
            return cells[2]
    raise AssertionError(f"the README has no row {measured!r}")


def readme_real_split_row(measured: str) -> float:
    """The value (before any parenthesis) of the README's real test-split row whose "measured" cell is ``measured``."""
    return float(readme_real_split_cell(measured).split()[0])


@pytest.mark.skipif(not committed_weights_present(), reason="no committed weights")
@pytest.mark.skipif(not realdata.real_photos("test"), reason="real labelled photos absent")
def test_make_eval_reproduces_the_real_photo_figures_the_readme_states() -> None:
    pipeline = TorchPipeline.from_weights(*(paths.default_weights(name) for name in ("detector", "stn", "lprnet")))
    report = evaluate_real_split(pipeline)
    assert report is not None and report["photos"] == 79
    stated = {
        "plates found (a box's centre inside the plate, or IoU >= 0.3)": report["found"]["recall"],
        "false boxes per photo": report["found"]["false_boxes_per_image"],
        "AP@0.5": report["iou50"]["map50"],
    }
    for measured, value in stated.items():
        assert readme_real_split_row(measured) == pytest.approx(value, abs=README_TOLERANCE), measured


@pytest.mark.skipif(not committed_weights_present(), reason="no committed weights")
@pytest.mark.skipif(not realdata.real_photos("test"), reason="real labelled photos absent")
@pytest.mark.parametrize("layout", realdata.CAMERA_LAYOUTS)
def test_make_eval_reproduces_the_camera_size_figures_the_readme_states(layout: str) -> None:
    # The real test photos at camera sizes take the tiled views and their thresholds, which the photos never reach.
    pipeline = TorchPipeline.from_weights(*(paths.default_weights(name) for name in ("detector", "stn", "lprnet")))
    report = evaluate_real_split(pipeline, layout=layout)
    assert report is not None and report["photos"] == 79
    cells = readme_real_split_cell(f"plates found / false boxes per image, {layout}").split()
    found, false_boxes = float(cells[0]), float(cells[2])
    assert found == pytest.approx(report["found"]["recall"], abs=README_TOLERANCE)
    assert false_boxes == pytest.approx(report["found"]["false_boxes_per_image"], abs=README_TOLERANCE)
