"""Detector views, view merging and plate-crop geometry in PyTorch against independent NumPy/OpenCV references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from alpr import spec
from alpr.crop import Crop
from alpr.geometry import (
    boxes_from_letterbox,
    boxes_to_letterbox,
    crop_plates,
    letterbox_transform,
    merged_plates,
    view_windows,
)
from alpr.preprocess import Preprocess
from alpr.reference import crop_reference, crop_step_reference, preprocess_reference
from alpr.views import letterbox_layout, letterbox_views, window_corners

# Letterbox outputs are uint8: float32 (PyTorch) and float64 (NumPy) samples that straddle .5 round apart, so one
# grey level on a small share of pixels; OpenCV's 11-bit fixed-point weights give one level on more of them.
GREY_LEVEL = 1
MAX_SHARE_OFF_BY_ONE = 0.01
# Normalised crops (1/128 per grey level): float32 sample positions against float64 ones.
CROP_TOLERANCE = 1e-3


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 0) if min(height, width) >= 5 else noise


def detector_views(image: np.ndarray, grid: int = spec.TILE_GRID) -> np.ndarray:
    with torch.no_grad():
        return Preprocess(grid)(torch.from_numpy(image)).numpy()


def letterbox(image: np.ndarray) -> np.ndarray:
    """The whole-image view alone, ``[1, 3, 640, 640]``."""
    return detector_views(image, grid=1)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1080, 1920, (1 / 3, 0.0, 140.0)),
        (1920, 1080, (1 / 3, 140.0, 0.0)),
        (16, 16, (40.0, 0.0, 0.0)),
        (640, 640, (1.0, 0.0, 0.0)),
        (2160, 4096, (0.15625, 0.0, 151.0)),  # 2160 r = 337.5 rounds to even: 338 rows
        (439, 780, (640 / 780, 0.0, 140.0)),
    ],
)
def test_letterbox_transform_scales_the_long_side_to_640_and_centres(height, width, expected) -> None:
    r, pad_x, pad_y = letterbox_transform(height, width)
    assert (r, pad_x, pad_y) == pytest.approx(expected, abs=1e-5)
    tensors = letterbox_transform(torch.tensor(height), torch.tensor(width))
    assert [float(t) for t in tensors] == [r, pad_x, pad_y], "tensor and Python sizes must agree to the bit"


@pytest.mark.parametrize(
    ("height", "width"),
    [(1080, 1920), (1001, 357), (16, 16), (37, 1001), (2160, 4096), (4096, 2160)],
    ids=["landscape", "portrait", "tiny", "thin", "4k", "4k-portrait"],
)
def test_detector_views_match_numpy_reference(height: int, width: int) -> None:
    image = photo_like(np.random.default_rng(height * 7 + width), height, width)
    actual, expected = detector_views(image), preprocess_reference(image)
    views = spec.image_views(height, width)
    assert actual.shape == (views, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE) and actual.dtype == np.uint8
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= GREY_LEVEL, f"max abs diff {diff.max()} > {GREY_LEVEL} grey level"
    share = (diff > 0).mean()
    assert share <= MAX_SHARE_OFF_BY_ONE, f"{share:.4f} of pixels off by one grey level (allowed 1 %)"


@pytest.mark.parametrize(
    ("height", "width"),
    [(1080, 1920), (480, 640), (701, 1003), (16, 16), (320, 320), (37, 1001), (1280, 641), (4096, 2160)],
)
@pytest.mark.parametrize("grid", [1, spec.TILE_GRID])
def test_opencv_views_of_the_cpu_targets_equal_the_graph(height: int, width: int, grid: int) -> None:
    image = photo_like(np.random.default_rng(height + width), height, width)
    opencv = letterbox_views(image, grid)
    assert opencv.shape == (spec.image_views(height, width, grid), 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE)
    for name, other in (("graph", detector_views(image, grid)), ("NumPy", preprocess_reference(image, grid))):
        diff = np.abs(opencv.astype(int) - other.astype(int))
        assert diff.max() <= GREY_LEVEL, f"max abs diff {diff.max()} against the {name} (fixed point) > 1 grey level"
        # The same canvas pixels are filled: only the interpolation's rounding may differ.
        assert ((opencv == spec.LETTERBOX_FILL) | (other != spec.LETTERBOX_FILL) | (diff <= 1)).all()


def test_numpy_sizes_equal_the_graph_sizes_to_the_bit() -> None:
    rng = np.random.default_rng(11)
    sides = np.concatenate([[16, 17, 639, 640, 641, 1080, 1280, 1920, 4096], rng.integers(16, 4097, 300)])
    for height, width in zip(sides, np.roll(sides, 7), strict=True):
        expected = view_windows(int(height), int(width)).tolist()
        corners = window_corners(int(height), int(width), all_tiles=True)
        assert [list(map(float, window)) for window in corners] == expected
        for x0, y0, x1, y1 in expected:
            r, pad_x, pad_y, rows, cols = letterbox_layout(y1 - y0, x1 - x0)
            tensors = letterbox_transform(torch.tensor(y1 - y0), torch.tensor(x1 - x0))
            assert [float(t) for t in tensors] == [r, pad_x, pad_y]
            assert pad_x == (spec.DETECTOR_SIZE - cols) // 2 and pad_y == (spec.DETECTOR_SIZE - rows) // 2


def test_each_view_samples_its_own_window() -> None:
    # A bright column just outside the first tile must not bleed into it.
    image = np.zeros((1080, 1920, 3), np.uint8)
    x1 = window_corners(1080, 1920)[1][2]
    image[:, x1:] = 255
    for views in (letterbox_views(image), detector_views(image), preprocess_reference(image)):
        assert set(np.unique(views[1]).tolist()) == {0, spec.LETTERBOX_FILL}


@pytest.mark.parametrize(("height", "width", "views"), [(480, 640, 1), (640, 640, 1), (640, 641, 5), (1080, 1920, 5)])
def test_an_image_that_fits_the_canvas_gets_the_whole_view_alone(height: int, width: int, views: int) -> None:
    image = photo_like(np.random.default_rng(9), height, width)
    assert spec.image_views(height, width) == views
    for name, drawn in (("graph", detector_views(image)), ("OpenCV", letterbox_views(image))):
        assert len(drawn) == views, name
    assert len(preprocess_reference(image)) == views
    assert len(window_corners(height, width)) == views and len(window_corners(height, width, all_tiles=True)) == 5


@pytest.mark.parametrize(("height", "width", "kept"), [(480, 640, True), (1080, 1920, False)])
def test_the_whole_view_alone_has_its_own_threshold(height: int, width: int, kept: bool) -> None:
    """A whole-view box scoring between the two thresholds is kept when the view is alone, dropped among tiles."""
    views, k = spec.image_views(height, width), spec.MAX_PLATES
    num_dets, det_boxes = torch.zeros((views, 1), dtype=torch.int32), torch.zeros((views, k, 4))
    det_scores = torch.zeros((views, k))
    num_dets[0], det_boxes[0, 0], det_scores[0, 0] = 1, torch.tensor([300.0, 300, 360, 315]), 0.7
    alone, among_tiles = 0.6, 0.8
    count, _, scores = merged_plates(
        num_dets, det_boxes, det_scores, torch.tensor(height), torch.tensor(width), thresholds=(alone, among_tiles, 0.8)
    )
    assert int(count) == int(kept) and float(scores[0]) == (pytest.approx(0.7) if kept else 0.0)


def test_letterbox_of_a_640_square_is_the_image_in_rgb_planes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox(image)[0], image[..., ::-1].transpose(2, 0, 1))


def test_letterbox_fills_outside_the_centred_image() -> None:
    image = np.full((1080, 1920, 3), 7, dtype=np.uint8)
    output = letterbox(image)[0]
    # r = 1/3: the image covers rows 140 to 499 exactly.
    assert (output[:, :140] == spec.LETTERBOX_FILL).all() and (output[:, 500:] == spec.LETTERBOX_FILL).all()
    assert (output[:, 140:500] == 7).all()


def test_boxes_round_trip_through_the_letterbox() -> None:
    boxes = torch.tensor([[94.43, 330.95, 131.89, 342.22], [0.0, 0.0, 780.0, 439.0]])
    on_canvas = boxes_to_letterbox(boxes, 439, 780)
    assert on_canvas[1].tolist() == pytest.approx([0.0, 140.0, 640.0, 500.205], abs=1e-3)
    torch.testing.assert_close(boxes_from_letterbox(on_canvas, 439, 780), boxes, atol=1e-4, rtol=0)


def test_crop_of_a_one_to_one_region_is_the_raw_pixels() -> None:
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    # Grown by 20 % of its height above and below, this box spans exactly rows 100-124 and columns 50-144.
    height = spec.CROP_HEIGHT / (1 + 2 * spec.CROP_MARGIN)
    margin = spec.CROP_MARGIN * height
    box = np.array([[50.0, 100 + margin, 50.0 + spec.CROP_WIDTH, 100 + margin + height]])
    crop = crop_plates(image, box)[0].numpy()
    raw = image[100:124, 50:144].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(crop, (raw - spec.PLATE_MEAN) * spec.PLATE_SCALE, atol=1e-3)


def test_crop_matches_numpy_reference_including_boxes_past_the_border() -> None:
    rng = np.random.default_rng(2)
    image = photo_like(rng, 439, 780)
    x1, y1 = rng.uniform(-30, 700, 16), rng.uniform(-20, 420, 16)
    # From enlarged to shrunk ten times (past the taps, where both keep the window's central pixels).
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 900, 16), y1 + rng.uniform(1, 160, 16)], 1).astype(np.float32)
    actual = crop_plates(torch.from_numpy(image), torch.from_numpy(boxes)).numpy()
    expected = crop_reference(image, boxes)
    assert actual.shape == (16, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH)
    diff = np.abs(actual - expected).max()
    assert diff <= CROP_TOLERANCE, f"max abs diff {diff:.2e} > {CROP_TOLERANCE} (normalised pixels)"


def test_a_shrunk_plate_is_area_averaged_like_cv2_inter_area() -> None:
    # A large plate shrunk three times: every crop pixel is the mean of a 3x3 block, as in the recogniser's training
    # crops (cv2.INTER_AREA), where bilinear sampling would read one pixel in nine and alias the characters.
    image = np.random.default_rng(3).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    height = 3 * spec.CROP_HEIGHT / (1 + 2 * spec.CROP_MARGIN)
    margin = spec.CROP_MARGIN * height
    box = np.array([[50.0, 100 + margin, 50.0 + 3 * spec.CROP_WIDTH, 100 + margin + height]])
    crop = crop_plates(image, box)[0].numpy() / spec.PLATE_SCALE + spec.PLATE_MEAN
    region = image[100 : 100 + 3 * spec.CROP_HEIGHT, 50 : 50 + 3 * spec.CROP_WIDTH]
    expected = cv2.resize(region, (spec.CROP_WIDTH, spec.CROP_HEIGHT), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(crop, expected.transpose(2, 0, 1), atol=0.51)  # OpenCV rounds to uint8
    # Not a sample of one pixel per block: far from the block's top-left pixel.
    assert np.abs(crop - region[::3, ::3].transpose(2, 0, 1)).mean() > 20


def test_an_enlarged_plate_is_sampled_bilinearly() -> None:
    # Twice enlarged: a one-pixel window over square pixels is linear interpolation between pixel centres.
    image = np.random.default_rng(4).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    height = spec.CROP_HEIGHT / 2 / (1 + 2 * spec.CROP_MARGIN)
    margin = spec.CROP_MARGIN * height
    box = np.array([[40.0, 60 + margin, 40.0 + spec.CROP_WIDTH / 2, 60 + margin + height]])
    crop = crop_plates(image, box)[0].numpy() / spec.PLATE_SCALE + spec.PLATE_MEAN
    region = image[60 : 60 + spec.CROP_HEIGHT // 2, 40 : 40 + spec.CROP_WIDTH // 2]
    expected = cv2.resize(region, (spec.CROP_WIDTH, spec.CROP_HEIGHT), interpolation=cv2.INTER_LINEAR)
    # Inside the border (OpenCV replicates the region's edge where the crop reads the image around it), to OpenCV's
    # fixed-point weights and rounding.
    np.testing.assert_allclose(crop[:, 1:-1, 1:-1], expected.transpose(2, 0, 1)[:, 1:-1, 1:-1], atol=1.0)


def detections(boxes: list[list[float]], scores: list[float]) -> tuple[np.ndarray, ...]:
    """Crop-step inputs where the whole view detects ``boxes`` (canvas pixels) and no tile detects anything."""
    return view_detections({0: list(zip(boxes, scores, strict=True))})


def run_cropper(image: np.ndarray, *inputs: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = Crop()(torch.from_numpy(image), *(torch.from_numpy(value) for value in inputs))
    return [output.numpy() for output in outputs]


def test_cropper_without_detections_gives_one_zero_padding_row() -> None:
    image = photo_like(np.random.default_rng(3), 439, 780)
    num_dets, det_boxes, det_scores = detections([[10, 200, 90, 230]], [0.9])
    crops, plate_boxes, plate_scores = run_cropper(image, np.zeros_like(num_dets), det_boxes, det_scores)
    assert crops.shape == (1, 3, spec.CROP_HEIGHT, spec.CROP_WIDTH)
    assert not crops.any() and not plate_boxes.any() and plate_scores.tolist() == [0.0]


def test_cropper_maps_boxes_back_clips_them_and_matches_reference() -> None:
    image = photo_like(np.random.default_rng(4), 439, 780)
    # Canvas r = 640/780 = 0.8205, pad_y = 140: the second box reaches past the left and bottom edges of the image.
    inputs = detections(
        [[77.5, 411.4, 108.2, 420.6], [-20.0, 480.0, 60.0, 520.0], [300, 200, 400, 260]], [0.99, 0.95, 0.9]
    )
    crops, plate_boxes, plate_scores = run_cropper(image, *inputs)
    assert crops.shape[0] == plate_boxes.shape[0] == plate_scores.shape[0] == 3
    assert plate_boxes[0].tolist() == pytest.approx([94.453, 330.769, 131.869, 341.981], abs=1e-3)
    assert plate_boxes[1].tolist() == pytest.approx([0.0, 414.375, 73.125, 439.0], abs=1e-3), "clipped to 780x439"
    np.testing.assert_array_equal(plate_scores, np.float32([0.99, 0.95, 0.9]))
    expected = crop_step_reference(image, *inputs)
    for name, actual, reference in zip(
        ("crops", "plate_boxes", "plate_scores"), (crops, plate_boxes, plate_scores), expected, strict=True
    ):
        diff = np.abs(actual - reference).max()
        assert diff <= CROP_TOLERANCE, f"{name}: max abs diff {diff:.2e} > {CROP_TOLERANCE}"


def test_view_windows_are_the_image_then_overlapping_tiles_that_cover_it() -> None:
    windows = view_windows(900, 1800, grid=2).numpy()
    # Tiles 1 / (2 - 0.2) of each side: 1000x500, the second starting 80 % of a tile further.
    expected = [[0, 0, 1800, 900], [0, 0, 1000, 500], [800, 0, 1800, 500], [0, 400, 1000, 900], [800, 400, 1800, 900]]
    np.testing.assert_allclose(windows, expected, atol=1e-3)
    three = view_windows(1080, 1920, grid=3).numpy()
    assert len(three) == 10 and three[-1, 2:].tolist() == [1920, 1080]
    np.testing.assert_allclose(three[1, 2] - three[2, 0], spec.TILE_OVERLAP * three[1, 2], atol=1)
    assert (three == np.round(three)).all(), "corners are whole pixels"


def test_grid_one_is_the_whole_image_alone() -> None:
    assert view_windows(439, 780, grid=1).tolist() == [[0, 0, 780, 439]]
    image = photo_like(np.random.default_rng(7), 439, 780)
    assert letterbox(image).shape == (1, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE)
    k = spec.MAX_PLATES
    num_dets, det_boxes, det_scores = np.array([[2]], np.int32), np.zeros((1, k, 4), np.float32), np.zeros((1, k))
    det_boxes[0, :2] = [[77.5, 411.4, 108.2, 420.6], [300, 200, 400, 260]]
    det_scores = det_scores.astype(np.float32)
    det_scores[0, :2] = [0.9, spec.SINGLE_VIEW_CONFIDENCE + 0.05]
    with torch.no_grad():
        outputs = Crop(grid=1)(*(torch.from_numpy(v) for v in (image, num_dets, det_boxes, det_scores)))
    expected = crop_step_reference(image, num_dets, det_boxes, det_scores, grid=1)
    assert outputs[0].shape[0] == 2
    for actual, reference in zip(outputs, expected, strict=True):
        assert np.abs(actual.numpy() - reference).max() <= CROP_TOLERANCE


def test_a_tile_view_is_the_letterbox_of_its_window() -> None:
    image = photo_like(np.random.default_rng(5), 900, 1800)
    views = detector_views(image)
    np.testing.assert_array_equal(views[0], letterbox(image)[0])
    # Bottom-right tile: columns 800-1800, rows 400-900, shown at twice the whole view's scale.
    diff = np.abs(views[4].astype(int) - letterbox(np.ascontiguousarray(image[400:900, 800:1800]))[0].astype(int))
    assert diff.max() <= GREY_LEVEL and (diff > 0).mean() <= MAX_SHARE_OFF_BY_ONE


def view_detections(per_view: dict[int, list[tuple[list[float], float]]]) -> tuple[np.ndarray, ...]:
    """Crop-step inputs from ``{view: [(canvas box, score), ...]}``; views not named detect nothing."""
    k = spec.MAX_PLATES
    num_dets = np.zeros((spec.DETECTOR_VIEWS, 1), np.int32)
    det_boxes = np.zeros((spec.DETECTOR_VIEWS, k, 4), np.float32)
    det_scores = np.zeros((spec.DETECTOR_VIEWS, k), np.float32)
    for view, found in per_view.items():
        num_dets[view] = len(found)
        for row, (box, score) in enumerate(found):
            det_boxes[view, row], det_scores[view, row] = box, score
    return num_dets, det_boxes, det_scores


def test_cropper_merges_the_views() -> None:
    # 1800x900: whole view r = 0.3556 (pad_y 160); each tile r = 0.64 (pad_y 160).
    image = photo_like(np.random.default_rng(6), 900, 1800)
    inputs = view_detections(
        {
            # A plate at original x 100-180, y 300-330, seen by the whole view and better by the top-left tile;
            # then a whole-view box under WHOLE_VIEW_CONFIDENCE, dropped.
            0: [
                ([35.56, 266.67, 64.0, 277.33], 0.88),
                ([300.0, 300.0, 340.0, 310.0], spec.WHOLE_VIEW_CONFIDENCE - 0.01),
            ],
            1: [
                ([64.0, 352.0, 115.2, 371.2], 0.9),
                # Wider than TILE_MAX_PLATE on the whole view (about 43 px): the whole view's to answer, dropped.
                ([300.0, 200.0, 420.0, 230.0], 0.95),
                # Touching the tile's right edge (x 1000 of the original): cut by the border, dropped.
                ([600.0, 300.0, 639.5, 310.0], 0.8),
            ],
            # A small plate only the bottom-right tile finds: x 1500-1550, y 700-712; then one under TILE_CONFIDENCE.
            4: [([448.0, 352.0, 480.0, 359.68], 0.8), ([100.0, 100.0, 130.0, 108.0], spec.TILE_CONFIDENCE - 0.01)],
        }
    )
    crops, plate_boxes, plate_scores = run_cropper(image, *inputs)
    np.testing.assert_array_equal(plate_scores, np.float32([0.9, 0.8]))
    np.testing.assert_allclose(plate_boxes, [[100, 300, 180, 330], [1500, 700, 1550, 712]], atol=0.02)
    expected = crop_step_reference(image, *inputs)
    for actual, reference in zip((crops, plate_boxes, plate_scores), expected, strict=True):
        assert np.abs(actual - reference).max() <= CROP_TOLERANCE
