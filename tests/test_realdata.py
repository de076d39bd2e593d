"""Real labelled photos: the fixed splits, pasted Russian plates, the detector's real training tiles, the real-photo
detection criterion, and the default recogniser weights being the published checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alpr import paths, realdata
from alpr.metrics import DetectionTally, match_detections
from alpr.models import load_lprnet, load_stn
from alpr.models.published import PUBLISHED_SHA256, sha256
from alpr.train.detector import RealTiles

# The split is fixed by file name: these counts change only if the shared data changes.
SPLIT_PHOTOS = {"train": 591, "validation": 113, "test": 79}

needs_realtrain = pytest.mark.skipif(
    not realdata.realtrain_dir().is_dir(), reason=f"real photos absent from {realdata.realtrain_dir()}"
)


def test_a_box_whose_centre_lies_inside_a_plate_finds_it_whatever_its_iou() -> None:
    truth = np.array([[100.0, 100.0, 200.0, 130.0]])
    loose = np.array([[60.0, 90.0, 260.0, 150.0]])  # centre inside, IoU 0.25
    beside = np.array([[190.0, 100.0, 290.0, 130.0]])  # centre outside, IoU 0.05
    assert not match_detections(loose, np.array([0.9]), truth, 0.3)[0][0]
    assert match_detections(loose, np.array([0.9]), truth, 0.3, centre_counts=True)[0][0]
    assert not match_detections(beside, np.array([0.9]), truth, 0.3, centre_counts=True)[0][0]
    tally = realdata.found_tally()
    tally.add(np.concatenate([loose, beside]), np.array([0.9, 0.8]), truth)
    tally.add(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)))
    summary = tally.summary()
    assert summary["recall"] == 1.0 and summary["false_boxes_per_image"] == 0.5


def test_strict_and_real_tallies_differ_only_in_the_criterion() -> None:
    assert DetectionTally().iou_threshold == 0.5 and not DetectionTally().centre_counts
    assert realdata.found_tally().iou_threshold == realdata.FOUND_IOU


@needs_realtrain
def test_the_splits_are_fixed_and_disjoint() -> None:
    splits = {split: realdata.real_photos(split) for split in realdata.SPLITS}
    assert {split: len(photos) for split, photos in splits.items()} == SPLIT_PHOTOS
    names = [{photo.path for photo in photos} for photos in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for photo in splits["test"][:20]:
        height, width = realdata.read_photo(photo.path).shape[:2]
        assert len(photo.boxes) and (photo.boxes[:, 2:] > photo.boxes[:, :2]).all()
        assert (photo.boxes >= -1).all() and (photo.boxes[:, [0, 2]] <= width + 1).all()
        assert (photo.boxes[:, [1, 3]] <= height + 1).all()


def test_an_absent_folder_gives_no_photos(tmp_path) -> None:
    assert realdata.real_photos("train", tmp_path / "missing") == []
    with pytest.raises(ValueError):
        realdata.real_photos("everything")


@needs_realtrain
def test_a_pasted_plate_covers_the_box_and_nothing_else() -> None:
    photo = next(p for p in realdata.real_photos("train") if len(p.boxes))
    image = realdata.read_photo(photo.path)
    pasted = realdata.paste_russian_plates(np.random.default_rng(0), image, photo.boxes)
    changed = np.abs(pasted.astype(int) - image.astype(int)).max(-1) > 0
    x1, y1, x2, y2 = photo.boxes[0]
    grown = np.zeros_like(changed)
    grown[max(int(y1) - 3, 0) : int(y2) + 4, max(int(x1) - 3, 0) : int(x2) + 4] = True
    assert changed[grown].mean() > 0.3 and not changed[~grown].any()


@needs_realtrain
def test_real_training_tiles_hold_their_plates() -> None:
    tiles = RealTiles(realdata.real_photos("train"), 320)
    rng = np.random.default_rng(5)
    plates = 0
    for _ in range(12):
        tile, boxes = tiles(rng)
        assert tile.shape == (3, 320, 320) and tile.dtype == torch.uint8
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320
        plates += len(boxes)
    assert plates >= 6


@pytest.mark.skipif(not paths.published_weights("lprnet").exists(), reason="published checkpoints absent")
def test_the_default_recogniser_is_the_published_checkpoints_unchanged() -> None:
    for name, load in (("lprnet", load_lprnet), ("stn", load_stn)):
        assert sha256(paths.published_weights(name)) == PUBLISHED_SHA256[name]
        ours, published = load(paths.default_weights(name)), load(paths.published_weights(name))
        for (key, value), expected in zip(ours.state_dict().items(), published.state_dict().values(), strict=True):
            assert torch.equal(value, expected), key
