"""The serving contract: sizes, thresholds and tensor names shared by export, ensemble, client and benchmarks."""

from __future__ import annotations

# Detector input: letterboxed square, uint8 RGB planes.
DETECTOR_SIZE = 640
LETTERBOX_FILL = 114
# Served score thresholds, chosen by `make thresholds` (alpr/thresholds.py) on the validation split of the real labelled
# photos, never on a set that reports them; synthetic scenes are scored beside and rank nothing. The pair for an image
# with tiles (whole view 0.70, tile 0.75) had the highest lowest precision or recall on the photos enlarged to 1280 px
# (0.687, 0.783) and laid four to a 1920x1080 frame (0.936, 0.682): the labelled photos themselves all fit the canvas
# and never get tiles. The whole view alone (an image that fits the canvas, as every labelled photo does; or
# TILE_GRID=1) is best for the photos as they are at 0.70: precision 0.742, recall 0.760, where tiles gave 0.716 and
# 0.783 at five times the detector's work.
WHOLE_VIEW_CONFIDENCE = 0.70
TILE_CONFIDENCE = 0.75
SINGLE_VIEW_CONFIDENCE = 0.70
# The detector graph's own threshold, the lowest of them; the crop step applies each view's. Thresholding after the
# detector's per-view NMS equals thresholding before it: a box is only ever suppressed by a higher-scoring one.
DETECTOR_CONFIDENCE = min(WHOLE_VIEW_CONFIDENCE, TILE_CONFIDENCE, SINGLE_VIEW_CONFIDENCE)
DETECTOR_IOU = 0.45
# Detector views of one image: the whole frame, then a TILE_GRID x TILE_GRID grid of tiles overlapping by TILE_OVERLAP
# of their size, each letterboxed to 640 on its own, so that a small plate reaches the detector about TILE_GRID times
# larger. A tile answers only plates narrower than TILE_MAX_PLATE pixels on the whole frame's canvas (larger ones are
# the whole view's, and look larger in a tile than any plate the detector learnt) and not touching its inner edges
# (TILE_EDGE pixels of its own canvas): a plate cut by a tile border lies whole in a neighbour or in the whole view.
TILE_GRID = 2
TILE_OVERLAP = 0.2
TILE_MAX_PLATE = 32.0
TILE_EDGE = 2.0
# Tiles only where the whole view shrinks the image: an image whose long side fits the canvas is seen whole at full
# resolution or enlarged, and its tiles would only enlarge pixels that the whole view already has, at four times the
# detector's cost. On such an image the whole view is alone, with SINGLE_VIEW_CONFIDENCE.
TILES_ABOVE_SIDE = DETECTOR_SIZE


def detector_views(tile_grid: int = TILE_GRID) -> int:
    """The most detector views of one image: the whole image and ``tile_grid`` x ``tile_grid`` tiles (none for 1)."""
    return 1 + tile_grid * tile_grid if tile_grid > 1 else 1


def image_views(height: int, width: int, tile_grid: int = TILE_GRID) -> int:
    """V, the detector views of an image of ``height`` x ``width``: with tiles only when its long side exceeds
    ``TILES_ABOVE_SIDE``."""
    return detector_views(tile_grid) if max(height, width) > TILES_ABOVE_SIDE else 1


def view_thresholds() -> tuple[float, float, float]:
    """The served score thresholds: the whole view alone, the whole view among tiles, a tile."""
    return SINGLE_VIEW_CONFIDENCE, WHOLE_VIEW_CONFIDENCE, TILE_CONFIDENCE


def tile_grid_of(views: int) -> int:
    """The tile grid G that gives at most ``views`` detector views."""
    return next(grid for grid in range(1, views + 1) if detector_views(grid) == views)


# TILE_GRID is the default of a setting (make TILE_GRID=1: the whole image alone, about four times cheaper on a CPU).
DETECTOR_VIEWS = detector_views()

# Fixed top-K of the NMS inside the detector graph, and the most plates one image can answer.
MAX_PLATES = 8

# Recogniser crop: 20 % extra height above and below the box, none sideways, area-resampled to 24x94 from up to
# CROP_TAPS x CROP_TAPS source pixels per crop pixel (exact up to seven times the crop size: plates ~650 px wide).
CROP_HEIGHT = 24
CROP_WIDTH = 94
CROP_MARGIN = 0.2
CROP_TAPS = 8
PLATE_MEAN = 127.5
PLATE_SCALE = 0.0078125  # 1 / 128
LPRNET_STEPS = 18

# Images the service accepts.
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 4096

# Request priorities (Triton's priority levels, 1 first): live camera frames ahead of backfill from archives. A request
# that names none is live; the ensemble passes its priority on to every step with a queue.
PRIORITIES = {"live": 1, "backfill": 2}

# Batching limits of the batching steps.
# The detector batches views: up to four images' views per call.
DETECTOR_IMAGES_PER_BATCH = 4
DETECTOR_MAX_BATCH = DETECTOR_IMAGES_PER_BATCH * DETECTOR_VIEWS
RECOGNISER_MAX_BATCH = 32

ENSEMBLE_NAME = "plate_recognition"
# Repository layout: every model serves one version, in this directory; the platforms and backends of the steps.
MODEL_VERSION = "1"
ENSEMBLE_PLATFORM = "ensemble"
ONNXRUNTIME_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
PYTHON_BACKEND = "python"
# The project's Python-based backend that runs any ONNX step through onnxruntime (the CPU target).
ONNXRUNTIME_PYTHON_BACKEND = "onnxruntime_python"
# The ensemble's contract: one BGR image [H, W, 3] uint8 in; per plate a box [N, 4] (x1, y1, x2, y2 in image pixels),
# a detection score [N], the text [N] (BYTES) and the probability of the text [N] out.
IMAGE_INPUT = "image"
OUTPUT_NAMES = ("boxes", "det_scores", "texts", "text_scores")
# The same pipeline for an encoded image file: one BYTES element [1] holding a JPEG, PNG, WebP, BMP or TIFF file,
# decoded inside the server; the same outputs.
ENCODED_ENSEMBLE_NAME = "plate_recognition_encoded"
ENCODED_INPUT = "encoded"

# The tensors between the steps.
VIEWS = "images"
NUM_DETS, DET_BOXES, DET_SCORES = "num_dets", "det_boxes", "det_scores"
CROPS, PLATE_BOXES, PLATE_SCORES = "crops", "plate_boxes", "plate_scores"
RECTIFIED = "rectified"
LOGITS = "logits"
# Every step's tensor names, (inputs, outputs) in the order the step takes and gives them; the ensemble's steps in
# the order a request passes them. Shapes and types are in alpr/serving/repository.py.
STEP_TENSORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "image_decoder": ((ENCODED_INPUT,), (IMAGE_INPUT,)),
    "preprocess": ((IMAGE_INPUT,), (VIEWS,)),
    "detector": ((VIEWS,), (NUM_DETS, DET_BOXES, DET_SCORES)),
    "crop": ((IMAGE_INPUT, NUM_DETS, DET_BOXES, DET_SCORES), (CROPS, PLATE_BOXES, PLATE_SCORES)),
    "stn": ((CROPS,), (RECTIFIED,)),
    "lprnet": ((RECTIFIED,), (LOGITS,)),
    "ctc_decoder": ((LOGITS, PLATE_BOXES, PLATE_SCORES), OUTPUT_NAMES),
}
PIPELINE_STEPS = ("preprocess", "detector", "crop", "stn", "lprnet", "ctc_decoder")


def step_inputs(step: str) -> tuple[str, ...]:
    """The input tensor names of ``step``, in its order."""
    return STEP_TENSORS[step][0]


def step_outputs(step: str) -> tuple[str, ...]:
    """The output tensor names of ``step``, in its order."""
    return STEP_TENSORS[step][1]


# Operations: the launcher (alpr.serving.server) tells the steps through this variable how often it restarted the
# server after a step's process or the server died, and the CTC decoder publishes it as this gauge on the metrics
# endpoint.
RESTARTS_VARIABLE = "ALPR_SERVER_RESTARTS"
RESTARTS_METRIC = "alpr_server_restarts"
