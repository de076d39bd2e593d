"""The whole pipeline in one process, without a server: the reference the served ensemble must reproduce.

Two runners share one sequence of steps (preprocess -> detector -> crop -> stn -> lprnet -> decode):
``TorchPipeline`` calls the PyTorch modules the graphs are exported from, and ``OnnxPipeline`` calls the exported
ONNX graphs with onnxruntime (the in-process floor of the benchmarks), with the views drawn as the cpu target draws
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpr import spec
from alpr.ctc import decode_plates

STEPS = ("preprocess", "detector", "crop", "stn", "lprnet")


@dataclass
class PlateReadings:
    """What the ensemble answers for one image: N plates."""

    boxes: np.ndarray  # float32 [N, 4], x1 y1 x2 y2 in input pixels
    det_scores: np.ndarray  # float32 [N]
    texts: list[str]
    text_scores: np.ndarray  # float32 [N]

    def __len__(self) -> int:
        return len(self.texts)


def _finish(logits: np.ndarray, plate_boxes: np.ndarray, plate_scores: np.ndarray) -> PlateReadings:
    boxes, det_scores, texts, text_scores = decode_plates(logits, plate_boxes, plate_scores)
    return PlateReadings(boxes, det_scores, [t.decode() if isinstance(t, bytes) else t for t in texts], text_scores)


class TorchPipeline:
    """The PyTorch modules behind the served graphs, chained as the ensemble chains them.

    The views are drawn by OpenCV as the cpu target draws them (``alpr.views``); the ``Preprocess`` module that the
    GPU target's graph is exported from draws the same within one grey level.
    """

    def __init__(
        self,
        detector,
        stn,
        lprnet,
        max_plates: int = spec.MAX_PLATES,
        tile_grid: int = spec.TILE_GRID,
    ) -> None:
        import torch

        from alpr.crop import Crop
        from alpr.detector_graph import DetectorWithNMS
        from alpr.views import letterbox_views

        self.torch = torch
        self.views = lambda image: torch.from_numpy(letterbox_views(image.numpy(), tile_grid))
        self.detector = DetectorWithNMS(detector.eval(), max_detections=max_plates).eval()
        self.cropper = Crop(tile_grid).eval()
        self.stn = stn.eval()
        self.lprnet = lprnet.eval()

    @classmethod
    def from_weights(
        cls,
        detector: str | Path,
        stn: str | Path,
        lprnet: str | Path,
        max_plates: int = spec.MAX_PLATES,
        tile_grid: int = spec.TILE_GRID,
    ) -> TorchPipeline:
        """Load the three checkpoints (any supported format) into a pipeline."""
        from alpr.models import load_detector, load_lprnet, load_stn

        return cls(load_detector(detector), load_stn(stn), load_lprnet(lprnet), max_plates, tile_grid)

    def __call__(self, image: np.ndarray) -> PlateReadings:
        """Plates of one BGR uint8 ``[H, W, 3]`` image."""
        torch = self.torch
        with torch.no_grad():
            tensor = torch.from_numpy(np.ascontiguousarray(image))
            num_dets, det_boxes, det_scores = self.detector(self.views(tensor))
            crops, plate_boxes, plate_scores = self.cropper(tensor, num_dets, det_boxes, det_scores)
            logits = self.lprnet(self.stn(crops))
        return _finish(logits.numpy(), plate_boxes.numpy(), plate_scores.numpy())

    def read_boxes(self, image: np.ndarray, boxes: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Texts and text scores of given boxes (original pixels): the recogniser path alone."""
        from alpr.ctc import decode_with_confidence
        from alpr.geometry import crop_plates

        with self.torch.no_grad():
            logits = self.lprnet(self.stn(crop_plates(np.ascontiguousarray(image), np.asarray(boxes, np.float32))))
        return decode_with_confidence(logits.numpy())


class OnnxPipeline:
    """The exported graphs called directly with onnxruntime, in this process.

    The views come from OpenCV (``alpr.views``), as the cpu target serves them, or with ``preprocess_graph`` from the
    exported ``preprocess`` graph, as the GPU target computes them.
    """

    def __init__(
        self, onnx_dir: str | Path, threads: int = 1, tile_grid: int = spec.TILE_GRID, preprocess_graph: bool = False
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.tile_grid = tile_grid
        self.sessions = {
            step: ort.InferenceSession(
                str(Path(onnx_dir) / f"{step}.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for step in STEPS
            if preprocess_graph or step != "preprocess"
        }

    def __call__(self, image: np.ndarray) -> PlateReadings:
        """Plates of one BGR uint8 ``[H, W, 3]`` image."""
        (images,) = self.run("preprocess", image)
        num_dets, det_boxes, det_scores = self.run("detector", images)
        crops, plate_boxes, plate_scores = self.run("crop", image, num_dets, det_boxes, det_scores)
        (rectified,) = self.run("stn", crops)
        (logits,) = self.run("lprnet", rectified)
        return _finish(logits, plate_boxes, plate_scores)

    def run(self, step: str, *values: np.ndarray) -> list[np.ndarray]:
        """The outputs of ``step``'s graph for its inputs ``values``, both in the order of ``spec.STEP_TENSORS``."""
        if step not in self.sessions:  # the views drawn by OpenCV
            from alpr.views import letterbox_views

            (image,) = values
            return [letterbox_views(image, self.tile_grid)]
        feeds = dict(zip(spec.step_inputs(step), values, strict=True))
        return self.sessions[step].run(list(spec.step_outputs(step)), feeds)
