"""The three networks of the pipeline and their checkpoint loaders (formats: see ``alpr.models.checkpoints``)."""

from alpr.models.checkpoints import (
    Checkpoint,
    load_detector,
    load_lprnet,
    load_stn,
    read_checkpoint,
    save_checkpoint,
)
from alpr.models.lprnet import LPRNet
from alpr.models.stn import STN
from alpr.models.yolov5 import YOLOv5

__all__ = [
    "STN",
    "Checkpoint",
    "LPRNet",
    "YOLOv5",
    "load_detector",
    "load_lprnet",
    "load_stn",
    "read_checkpoint",
    "save_checkpoint",
]
