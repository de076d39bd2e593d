"""The TensorRT variants of the served graphs: what ``engines/build.py`` builds plans from.

**Detector** (``detector_trt.onnx``): YOLOv5 with NMS done by TensorRT's ``EfficientNMS_TRT`` plugin. The ONNX
detector ends in ONNX ``NonMaxSuppression`` padded to a fixed top-K. TensorRT parses that operator too, but the
plugin does the same job in one fused kernel with fixed-shape outputs per image. The variant keeps the served
contract of the ONNX detector exactly:

    images     UINT8 [B, 3, 640, 640]
    num_dets   INT32 [B, 1]      detections kept per image
    det_boxes  FP32  [B, K, 4]   x1, y1, x2, y2 in letterbox pixels, sorted by score, padding rows 0
    det_scores FP32  [B, K]

The plugin node (TensorRT plugin registry name ``EfficientNMS_TRT``, ``plugin_version`` "1") takes boxes
``[B, N, 4]`` (corners: ``box_coding`` 0) and scores ``[B, N, 1]`` already activated (``score_activation`` 0), and
answers ``num_detections``, ``detection_boxes``, ``detection_scores`` and ``detection_classes``; the last is
dropped. TensorRT's ONNX parser finds a plugin by the node's op type whatever its domain; the node lives in the
``trt.plugins`` domain, the one onnxruntime's TensorRT provider reserves for TensorRT plugins, which also keeps
``onnx.checker`` from looking for it among the standard operators. A graph with this node does not run in
onnxruntime, so ``EfficientNMS.forward`` reproduces the plugin in PyTorch: the eager module gives the same shapes
and, up to ties, the same detections.

**Preprocess and crop** (``preprocess_trt.onnx``, ``crop_trt.onnx``): the same modules, run on the uint8 image
converted to float32 first. TensorRT admits uint8 tensors only at the network's edges, converted by a cast, while
the ONNX graphs gather their samples straight from the uint8 image to avoid copying a full frame on the CPU. The
results are identical (each sample is the same integer either way) and the graphs run in onnxruntime.

    python export/tensorrt_variant.py --out-dir build/onnx [--detector-weights W] [--max-plates K] [--tile-grid G]
                                      [--random-init]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable like ``python -m`` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx
import torch
from torch import nn

from alpr import spec
from alpr.detector_graph import DetectorWithNMS
from engines.build import TENSORRT_GRAPHS
from export.to_onnx import Graph, export_graph, networks_from_arguments, served_graphs, weight_arguments

PLUGIN_NAME = "EfficientNMS_TRT"
PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_VERSION = "1"
# The plugin sorts at most this many candidates per image before suppression (EfficientNMS's fixed top-k).
PLUGIN_MAX_CANDIDATES = 4096
BOX_CODING_CORNERS = 0
NO_BACKGROUND_CLASS = -1
OPSET = 17

(INPUT_NAME,) = spec.step_inputs("detector")
OUTPUT_NAMES = spec.step_outputs("detector")


@dataclass(frozen=True)
class NMSSettings:
    """The plugin's attributes; thresholds from the serving contract."""

    max_output_boxes: int = spec.MAX_PLATES
    iou_threshold: float = spec.DETECTOR_IOU
    score_threshold: float = spec.DETECTOR_CONFIDENCE


def box_iou(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of corner boxes ``[N, 4]`` and ``[M, 4]`` -> ``[N, M]``, as the plugin computes it.

    Corners are put in order first; the IoU is 0 where the intersection or the union is not positive.
    """

    def ordered(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])

    low, high = ordered(boxes)
    low_others, high_others = ordered(others)
    extent = torch.minimum(high[:, None], high_others[None]) - torch.maximum(low[:, None], low_others[None])
    intersection = extent.clamp(min=0).prod(dim=2)
    union = (high - low).prod(dim=1)[:, None] + (high_others - low_others).prod(dim=1)[None] - intersection
    positive = (intersection > 0) & (union > 0)
    return torch.where(positive, intersection / torch.where(positive, union, 1), 0.0)


def efficient_nms(
    boxes: torch.Tensor, scores: torch.Tensor, settings: NMSSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``EfficientNMS_TRT`` computes, per image and per class, in plain PyTorch.

    Candidates scoring at least ``score_threshold`` are sorted by score (the best ``PLUGIN_MAX_CANDIDATES`` kept);
    greedy suppression removes every box whose IoU with a kept box of the same class reaches ``iou_threshold``;
    the first ``max_output_boxes`` survivors are written, the rest of each row is zero. (The plugin's filter
    keeps scores >= threshold and suppresses at IoU >= threshold, where ONNX ``NonMaxSuppression`` uses > for
    both; the two agree except on exact ties, and its GPU sort orders equal scores arbitrarily.)
    """
    batch, _, classes = scores.shape
    k = settings.max_output_boxes
    num_detections = torch.zeros((batch, 1), dtype=torch.int32)
    detection_boxes = torch.zeros((batch, k, 4), dtype=torch.float32)
    detection_scores = torch.zeros((batch, k), dtype=torch.float32)
    detection_classes = torch.zeros((batch, k), dtype=torch.int32)
    for image in range(batch):
        flat_scores = scores[image].float().reshape(-1)  # [N * C], box-major
        candidates = torch.nonzero(flat_scores >= settings.score_threshold).flatten()
        order = torch.argsort(flat_scores[candidates], descending=True, stable=True)
        candidates = candidates[order][:PLUGIN_MAX_CANDIDATES]
        candidate_boxes = boxes[image, candidates // classes].float()
        candidate_classes = candidates % classes
        overlaps = box_iou(candidate_boxes, candidate_boxes)
        same_class = candidate_classes[:, None] == candidate_classes[None, :]
        suppressed = torch.zeros(len(candidates), dtype=torch.bool)
        kept: list[int] = []
        for index in range(len(candidates)):
            if suppressed[index]:
                continue
            kept.append(index)
            if len(kept) == k:
                break
            suppressed |= (overlaps[index] >= settings.iou_threshold) & same_class[index]
        count = len(kept)
        num_detections[image, 0] = count
        if count:
            selected = torch.tensor(kept, dtype=torch.long)
            detection_boxes[image, :count] = candidate_boxes[selected]
            detection_scores[image, :count] = flat_scores[candidates[selected]]
            detection_classes[image, :count] = candidate_classes[selected].to(torch.int32)
    return num_detections, detection_boxes, detection_scores, detection_classes


class EfficientNMS(torch.autograd.Function):
    """``EfficientNMS_TRT`` as one ONNX node at export, its PyTorch reproduction in eager mode."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        max_output_boxes: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        settings = NMSSettings(max_output_boxes, iou_threshold, score_threshold)
        return efficient_nms(boxes, scores, settings)

    @staticmethod
    def symbolic(
        g: torch.Graph,
        boxes: torch.Value,
        scores: torch.Value,
        max_output_boxes: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> tuple[torch.Value, torch.Value, torch.Value, torch.Value]:
        num_detections, detection_boxes, detection_scores, detection_classes = g.op(
            f"{PLUGIN_DOMAIN}::{PLUGIN_NAME}",
            boxes,
            scores,
            background_class_i=NO_BACKGROUND_CLASS,
            box_coding_i=BOX_CODING_CORNERS,
            iou_threshold_f=iou_threshold,
            score_threshold_f=score_threshold,
            max_output_boxes_i=max_output_boxes,
            score_activation_i=0,
            plugin_version_s=PLUGIN_VERSION,
            outputs=4,
        )
        # Declare what the plugin answers so the exported graph carries its output types and shapes.
        batch = _symbolic_dim(boxes, 0)
        num_detections.setType(boxes.type().with_dtype(torch.int32).with_sizes([batch, 1]))
        detection_boxes.setType(boxes.type().with_sizes([batch, max_output_boxes, 4]))
        detection_scores.setType(boxes.type().with_sizes([batch, max_output_boxes]))
        detection_classes.setType(boxes.type().with_dtype(torch.int32).with_sizes([batch, max_output_boxes]))
        return num_detections, detection_boxes, detection_scores, detection_classes


def _symbolic_dim(value: torch.Value, axis: int) -> int | None:
    """The static size of ``value``'s axis at export, or None where it is dynamic."""
    sizes = value.type().varyingSizes()
    return None if sizes is None else sizes[axis]


class TensorRTDetector(nn.Module):
    """``DetectorWithNMS`` with its suppression done by ``EfficientNMS_TRT``.

    The candidates are those of the ONNX detector: the same YOLOv5, boxes as corners, score = objectness x best class
    probability, its pre-NMS top-k; the thresholds and K are read from the wrapped detector, so the two graphs cannot
    drift apart.
    """

    def __init__(self, detector: DetectorWithNMS) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detector = self.detector
        predictions = detector.yolo(images.to(torch.float32) / 255)
        centre, size = predictions[..., 0:2], predictions[..., 2:4]
        boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
        scores = predictions[..., 4] * predictions[..., 5:].amax(-1)
        candidates = min(detector.pre_nms_top_k, int(scores.shape[1]))  # a constant: the input side is fixed
        top_scores, top_index = scores.topk(candidates, dim=1)
        # The reshape only states the static shape [B, candidates, 4] that the plugin's boxes input has.
        top_boxes = boxes.gather(1, top_index.unsqueeze(-1).expand(-1, -1, 4)).reshape(-1, candidates, 4)
        num_dets, det_boxes, det_scores, _ = EfficientNMS.apply(
            top_boxes, top_scores.unsqueeze(-1), detector.max_detections, detector.iou, detector.confidence
        )
        return num_dets, det_boxes, det_scores


def export_tensorrt_detector(detector: DetectorWithNMS, out: str | Path) -> Path:
    """Write the TensorRT variant of ``detector`` to ``out`` (batch dimension dynamic) and check it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = TensorRTDetector(detector).eval()
    example = torch.zeros((1, 3, spec.DETECTOR_SIZE, spec.DETECTOR_SIZE), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        # Only the TorchScript-based exporter honours autograd.Function.symbolic, hence dynamo=False and its
        # deprecation notice; the tracer's notes on the eager NMS do not matter, as the plugin node replaces it.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            custom_opsets={PLUGIN_DOMAIN: 1},
        )
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return out


class FloatImage(nn.Module):
    """A step that reads an HWC uint8 ``image`` first input, run on that image converted to float32."""

    def __init__(self, step: nn.Module) -> None:
        super().__init__()
        self.step = step

    def forward(self, image: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        return self.step(image.to(torch.float32), *others)


def float_image_graph(graph: Graph) -> Graph:
    """``graph`` (preprocess or crop) with its image converted to float32 before any other operation."""
    return dataclasses.replace(graph, module=FloatImage(graph.module))


def export_variants(graphs: dict[str, Graph], out_dir: str | Path) -> dict[str, Path]:
    """Write every TensorRT variant into ``out_dir``, from the served graphs of ``export/to_onnx.py``."""
    out = Path(out_dir)
    written = {"detector": export_tensorrt_detector(graphs["detector"].module, out / TENSORRT_GRAPHS["detector"])}
    for name in ("preprocess", "crop"):
        written[name] = export_graph(float_image_graph(graphs[name]), out / TENSORRT_GRAPHS[name])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="where the ONNX graphs are, e.g. build/onnx")
    weight_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    # The very modules the ONNX export traces, so both sets of graphs share weights, thresholds and K.
    graphs = served_graphs(networks_from_arguments(args), args.max_plates, tile_grid=args.tile_grid)
    for name, path in export_variants(graphs, args.out_dir).items():
        print(f"{name:<10} -> {path} (TensorRT variant)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
