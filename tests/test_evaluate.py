"""``make eval``: its tallies, and that it reproduces the accuracy the README states for the committed weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import committed_weights_present

from alpr import paths
from alpr.evaluate import ReadingTally, evaluate_heldout, evaluate_real, evaluate_without_camera, width_bin
from alpr.pipeline import TorchPipeline
from alpr.synth.dataset import HELDOUT_COUNT

# Same weights, same seeded scenes: only float rounding on another CPU may flip a borderline plate (1/671 = 0.0015).
README_TOLERANCE = 0.005
README_COLUMNS = {"all plates": None, "plates 40-80 px wide": "40-80 px", "plates 80+ px wide": "80+ px"}


def test_a_missed_plate_counts_as_read_wrong_in_every_character() -> None:
    tally = ReadingTally()
    tally.add("A123BC77", "A123BC77")
    tally.add("", "K456MH199", found=False)
    tally.add("A123BC78", "A123BC77")
    summary = tally.summary()
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["exact_match"] == pytest.approx(1 / 3)
    assert summary["cer"] == pytest.approx((0 + 9 + 1) / (8 + 9 + 8))


def test_plate_widths_fall_in_one_named_bin() -> None:
    assert width_bin((10.0, 0.0, 49.9, 10.0)) == "0-40 px"
    assert width_bin((0.0, 0.0, 40.0, 10.0)) == "40-80 px"
    assert width_bin((0.0, 0.0, 300.0, 60.0)) == "80+ px"


def test_real_photos_are_skipped_cleanly_where_absent(tmp_path: Path) -> None:
    assert evaluate_real(None, None, tmp_path / "missing") is None  # type: ignore[arg-type]


def readme_accuracy_table() -> dict[str, dict[str, float]]:
    """The "What it does today" table of the README: row label -> column header -> value."""
    lines = (paths.repo_root() / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| | all plates"))
    headers = [cell.strip() for cell in lines[start].strip("|").split("|")][1:]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        label, *values = (cell.strip() for cell in line.strip("|").split("|"))
        table[label] = dict(zip(headers, (float(value) for value in values), strict=True))
    return table


def readme_detector_summary() -> dict[str, float]:
    text = (paths.repo_root() / "README.md").read_text()
    match = re.search(r"Detector precision ([0-9.]+), AP@0\.5 ([0-9.]+)", text)
    assert match, "the README no longer states the detector's precision and AP"
    return {"precision": float(match[1]), "map50": float(match[2])}


@pytest.mark.skipif(not committed_weights_present(), reason="no committed weights")
def test_make_eval_reproduces_the_accuracy_the_readme_states() -> None:
    weights = {name: paths.default_weights(name) for name in ("detector", "stn", "lprnet")}
    pipeline = TorchPipeline.from_weights(**weights)
    report = evaluate_heldout(pipeline, HELDOUT_COUNT)
    without_camera = evaluate_without_camera(pipeline, HELDOUT_COUNT)
    rows = {  # README row -> (overall summary, summaries by width, metric)
        "detector recall (IoU 0.5)": (report["end_to_end"], report["end_to_end_by_plate_width"], "recall"),
        "plate read exactly, end to end": (report["end_to_end"], report["end_to_end_by_plate_width"], "exact_match"),
        "character error rate, end to end": (report["end_to_end"], report["end_to_end_by_plate_width"], "cer"),
        "read exactly by the recogniser alone, on the true boxes": (
            report["recogniser_on_true_boxes"],
            report["recogniser_on_true_boxes_by_plate_width"],
            "exact_match",
        ),
        "the same, on the same scenes without the camera effects": (
            without_camera["recogniser_on_true_boxes"],
            without_camera["by_plate_width"],
            "exact_match",
        ),
    }
    measured = {
        label: {
            column: (overall if width is None else by_width[width])[metric] for column, width in README_COLUMNS.items()
        }
        for label, (overall, by_width, metric) in rows.items()
    }
    stated = readme_accuracy_table()
    for label, columns in measured.items():
        for column, value in columns.items():
            assert stated[label][column] == pytest.approx(value, abs=README_TOLERANCE), (label, column)
    for key, value in readme_detector_summary().items():
        assert value == pytest.approx(report["detector"][key], abs=README_TOLERANCE), key
    assert np.isfinite(report["recogniser_on_true_boxes"]["cer"])
