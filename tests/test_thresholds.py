"""``make thresholds``: the sweep replays the served merge faithfully and never looks at the held-out set."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import committed_weights_present

from alpr import paths, spec
from alpr.metrics import DetectionTally
from alpr.pipeline import TorchPipeline
from alpr.synth.dataset import HELDOUT_SEED, MIXED_SIZES, iter_scenes
from alpr.thresholds import VALIDATION_SEED, detect_views, main, precision_recall, sweep, synthetic_samples

SCENES = 6

pytestmark = pytest.mark.skipif(not committed_weights_present(), reason="no committed weights")


@pytest.fixture(scope="module")
def detections():
    samples = synthetic_samples(VALIDATION_SEED, SCENES)
    return detect_views(paths.default_weights("detector"), samples, spec.TILE_GRID, "validation")


@pytest.mark.parametrize("tile_grid", sorted({spec.TILE_GRID, 1}))
def test_the_sweep_at_the_served_thresholds_measures_what_the_pipeline_answers(detections, tile_grid: int) -> None:
    # The sweep detects once at a low score floor and thresholds afterwards; the served graphs threshold first.
    pipeline = TorchPipeline.from_weights(
        *(paths.default_weights(name) for name in ("detector", "stn", "lprnet")), tile_grid=tile_grid
    )
    served = DetectionTally()
    for scene in iter_scenes(VALIDATION_SEED, SCENES, MIXED_SIZES):
        readings = pipeline(scene.image)
        truth = np.array([p.box_xyxy for p in scene.plates], dtype=np.float64).reshape(-1, 4)
        served.add(readings.boxes, readings.det_scores, truth)
    replayed = precision_recall(detections, tile_grid, spec.view_thresholds())
    assert served.summary()["predictions"] > 0
    for key in ("precision", "recall", "predictions", "plates"):
        assert replayed[key] == pytest.approx(served.summary()[key]), key


def test_the_best_thresholds_are_ranked_first_by_the_lowest_precision_or_recall(detections) -> None:
    # The same detections stand in for the real photos here (counted by the real-photo criterion): the ranking is
    # what is tested.
    result = sweep(detections, detections, spec.TILE_GRID)
    lower = [
        min(row["precision"], row["recall"], row["synthetic"]["precision"], row["synthetic"]["recall"])
        for row in result["pairs"]["top"]
    ]
    assert lower == sorted(lower, reverse=True)
    # The whole view alone acts on the images that fit the canvas, which the real photos rank.
    lower_real = [min(row["precision"], row["recall"]) for row in result["alone"]["top"]]
    assert lower_real == sorted(lower_real, reverse=True)
    for key in ("pairs", "alone"):
        assert result[key]["best"] == result[key]["top"][0]
    # The whole view's threshold when alone is scored on the images that fit the canvas (640x480), and only there.
    fitting = [d for d in detections if max(d.height, d.width) <= spec.TILES_ABOVE_SIDE]
    assert result["images_alone"]["synthetic"] == len(fitting) > 0
    assert result["alone"]["served"]["plates"] == sum(len(d.truth) for d in fitting)


def test_the_held_out_seed_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--seed", str(HELDOUT_SEED), "--scenes", "1"])
