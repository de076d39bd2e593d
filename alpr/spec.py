"""The serving contract: sizes, thresholds and tensor names shared by export, ensemble, client and benchmarks."""

from __future__ import annotations

# Detector input: letterboxed square, uint8 RGB planes.
DETECTOR_SIZE = 640
LETTERBOX_FILL = 114
DETECTOR_CONFIDENCE = 0.25
DETECTOR_IOU = 0.45
# Fixed top-K of the NMS inside the detector graph, and the most plates one image can answer.
MAX_PLATES = 8

# Recogniser crop: 20 % extra height above and below the box, none sideways, resampled to 24x94.
CROP_HEIGHT = 24
CROP_WIDTH = 94
CROP_MARGIN = 0.2
PLATE_MEAN = 127.5
PLATE_SCALE = 0.0078125  # 1 / 128
LPRNET_STEPS = 18

# Images the service accepts.
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 4096

# Batching limits of the batching steps.
DETECTOR_MAX_BATCH = 8
RECOGNISER_MAX_BATCH = 32

ENSEMBLE_NAME = "plate_recognition"
