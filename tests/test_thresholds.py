"""``make thresholds``: the sweep replays the served merge faithfully and never looks at the held-out set."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import committed_weights_present

from alpr import paths, realdata, spec
from alpr.metrics import DetectionTally
from alpr.pipeline import TorchPipeline
from alpr.synth.dataset import HELDOUT_SEED, MIXED_SIZES, iter_scenes
from alpr.thresholds import (
    VALIDATION_SEED,
    detect_views,
    main,
    markdown,
    precision_recall,
    sweep,
    synthetic_samples,
)

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


def test_the_best_thresholds_are_ranked_first_by_the_lowest_real_precision_or_recall(detections) -> None:
    # The same detections stand in for the real photos in every layout here (counted by the real-photo criterion):
    # the ranking is what is tested.
    result = sweep({layout: detections for layout in realdata.LAYOUTS}, detections, spec.TILE_GRID)

    def lowest(row: dict, layouts: list[str]) -> float:
        return min(min(row["real"][layout]["precision"], row["real"][layout]["recall"]) for layout in layouts)

    # The pair acts on the images that get tiles, which the camera-size layouts rank; the whole view alone acts on
    # the images that fit the canvas, which the photos as they are rank. The synthetic scenes rank neither.
    assert result["pairs"]["ranked_by"] == list(realdata.CAMERA_LAYOUTS)
    assert result["alone"]["ranked_by"] == ["photos"]
    for key in ("pairs", "alone"):
        layouts = result[key]["ranked_by"]
        lower = [lowest(row, layouts) for row in result[key]["top"]]
        assert lower == sorted(lower, reverse=True)
        assert result[key]["best"] == result[key]["top"][0]
        assert "synthetic" in result[key]["best"]
    # The whole view's threshold when alone is scored on the images that fit the canvas (640x480), and only there.
    fitting = [d for d in detections if max(d.height, d.width) <= spec.TILES_ABOVE_SIDE]
    assert result["images_alone"]["synthetic"] == len(fitting) > 0
    assert result["alone"]["served"]["real"]["photos"]["plates"] == sum(len(d.truth) for d in fitting)
    assert (
        markdown({"real_photos": 1, "scenes": SCENES, "seed": VALIDATION_SEED, "sweeps": [result]}).count("| served |")
        == 2
    )


def test_the_camera_size_layouts_hold_every_photo_and_plate_of_the_split() -> None:
    photos = realdata.real_photos("validation")
    if not photos:
        pytest.skip("real labelled photos absent")
    plates = sum(len(photo.boxes) for photo in photos)
    enlarged = list(realdata.samples("validation", "1280"))
    frames = list(realdata.samples("validation", "1080p"))
    assert len(enlarged) == len(photos) and len(frames) == -(-len(photos) // realdata.FRAME_GRID**2)
    assert {max(image.shape[:2]) for image, _ in enlarged} == {realdata.ENLARGED_SIDE}
    assert {image.shape[:2] for image, _ in frames} == {realdata.FRAME_SIZE}
    for layout in (enlarged, frames):
        assert sum(len(boxes) for _, boxes in layout) == plates
        for image, boxes in layout:  # every box lies in its image: tiles and the whole view see it all
            assert spec.image_views(*image.shape[:2]) > 1
            assert (boxes[:, :2] >= -1).all() and (boxes[:, 2] <= image.shape[1] + 1).all()
            assert (boxes[:, 3] <= image.shape[0] + 1).all()


def test_the_held_out_seed_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--seed", str(HELDOUT_SEED), "--scenes", "1"])
