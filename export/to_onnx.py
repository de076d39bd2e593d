"""Export the five served graphs to ONNX (opset 17): preprocess, detector, crop, stn, lprnet.

    python export/to_onnx.py --out-dir build/onnx [--detector-weights P] [--lprnet-weights P] [--stn-weights P]
                             [--max-plates K] [--tile-grid G] [--random-init]

Tensor names and shapes follow ARCHITECTURE.md. The batching steps (detector, stn, lprnet) get a dynamic first
axis; preprocess and crop take one image of any size. Weights default to the committed ``alpr/weights/*.pt``;
``--random-init`` exports untrained networks (seeded) for tests. Every file is checked with ``onnx.checker``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable like ``python -m`` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx
import torch
from torch import Tensor, nn

from alpr import spec
from alpr.crop import Crop
from alpr.detector_graph import DetectorWithNMS
from alpr.models import STN, LPRNet, YOLOv5, load_detector, load_lprnet, load_stn
from alpr.paths import repo_root
from alpr.preprocess import Preprocess

OPSET = 17
GRAPH_NAMES = ("preprocess", "detector", "crop", "stn", "lprnet")
DEFAULT_WEIGHTS_DIR = repo_root() / "alpr" / "weights"


@dataclass
class Networks:
    """The three trained networks of the pipeline, in eval mode."""

    detector: YOLOv5
    stn: STN
    lprnet: LPRNet


@dataclass
class Graph:
    """One served graph: its PyTorch source, tensor names, dynamic axes and an example input to trace with."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    example: tuple[Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def random_detector(seed: int = 0) -> YOLOv5:
    """An untrained YOLOv5n whose outputs vary like a trained one's, so that NMS and top-K have work to do.

    PyTorch's default initialisation lets activations vanish through the depth (every box then scores the prior).
    Batch-norm statistics measured on noise images restore unit-scale features; a damped head with zero biases
    spreads the scores around 0.25, without the ties of saturated sigmoids.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = YOLOv5("n", num_classes=1)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    momentum = norms[0].momentum
    for norm in norms:
        norm.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.rand((2, 3, 256, 256), generator=generator))
        for norm in norms:
            norm.momentum = momentum
        for conv in model.head.m:
            conv.weight.mul_(0.1)
            conv.bias.zero_()
    return model.eval()


def random_networks(seed: int = 0) -> Networks:
    """Untrained networks for tests: the detector of ``random_detector``, an STN that tilts and shifts a little."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        stn, lprnet = STN(), LPRNet()
        with torch.no_grad():
            regressor = stn.fc_loc[-1]
            regressor.weight.normal_(0.0, 0.01)
            regressor.bias.add_(torch.randn(6) * 0.05)
    return Networks(random_detector(seed), stn.eval(), lprnet.eval())


def load_networks(
    detector_weights: Path | None = None,
    lprnet_weights: Path | None = None,
    stn_weights: Path | None = None,
    random_init: bool = False,
    seed: int = 0,
) -> Networks:
    """The networks from the given checkpoints, else the committed defaults.

    With ``random_init``, a network without given weights is the seeded untrained one of ``random_networks``.
    """
    untrained = random_networks(seed) if random_init else None

    def weights(given: Path | None, name: str) -> Path | None:
        if given is None and untrained is not None:
            return None
        path = Path(given) if given else DEFAULT_WEIGHTS_DIR / f"{name}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no {name} weights at {path}: pass --{name}-weights PATH or --random-init")
        return path

    detector, stn, lprnet = (
        weights(detector_weights, "detector"),
        weights(stn_weights, "stn"),
        weights(lprnet_weights, "lprnet"),
    )
    return Networks(
        detector=load_detector(detector) if detector else untrained.detector,
        stn=load_stn(stn) if stn else untrained.stn,
        lprnet=load_lprnet(lprnet) if lprnet else untrained.lprnet,
    )


def served_graphs(
    networks: Networks,
    max_plates: int = spec.MAX_PLATES,
    confidence: float = spec.DETECTOR_CONFIDENCE,
    iou: float = spec.DETECTOR_IOU,
    tile_grid: int = spec.TILE_GRID,
) -> dict[str, Graph]:
    """The five served graphs, keyed by step name, with the tensor contract of ARCHITECTURE.md."""
    size, crop = spec.DETECTOR_SIZE, (3, spec.CROP_HEIGHT, spec.CROP_WIDTH)
    image = torch.zeros((720, 1280, 3), dtype=torch.uint8)  # larger than the canvas: every view
    views = spec.detector_views(tile_grid)
    detections = (
        torch.ones((views, 1), dtype=torch.int32),
        torch.tensor([[[100.0, 300.0, 200.0, 330.0]] * max_plates] * views),
        torch.full((views, max_plates), 0.5),
    )
    batch = {0: "batch"}
    plates = {0: "plates"}
    return {
        "preprocess": Graph(
            "preprocess",
            Preprocess(tile_grid),
            spec.step_inputs("preprocess"),
            spec.step_outputs("preprocess"),
            (image,),
            {spec.IMAGE_INPUT: {0: "height", 1: "width"}, spec.VIEWS: {0: "views"}},
        ),
        "detector": Graph(
            "detector",
            DetectorWithNMS(networks.detector, max_plates, confidence, iou).eval(),
            spec.step_inputs("detector"),
            spec.step_outputs("detector"),
            (torch.zeros((1, 3, size, size), dtype=torch.uint8),),
            dict.fromkeys(spec.step_inputs("detector") + spec.step_outputs("detector"), batch),
        ),
        "crop": Graph(
            "crop",
            Crop(tile_grid),
            spec.step_inputs("crop"),
            spec.step_outputs("crop"),
            (image, *detections),
            {
                spec.IMAGE_INPUT: {0: "height", 1: "width"},
                **{name: {0: "views"} for name in spec.step_inputs("crop")[1:]},
                **dict.fromkeys(spec.step_outputs("crop"), plates),
            },
        ),
        "stn": Graph(
            "stn",
            networks.stn,
            spec.step_inputs("stn"),
            spec.step_outputs("stn"),
            (torch.zeros((1, *crop)),),
            dict.fromkeys(spec.step_inputs("stn") + spec.step_outputs("stn"), batch),
        ),
        "lprnet": Graph(
            "lprnet",
            networks.lprnet,
            spec.step_inputs("lprnet"),
            spec.step_outputs("lprnet"),
            (torch.zeros((1, *crop)),),
            dict.fromkeys(spec.step_inputs("lprnet") + spec.step_outputs("lprnet"), batch),
        ),
    }


def export_graph(graph: Graph, path: Path) -> Path:
    """Trace ``graph`` to ONNX at ``path`` (legacy TorchScript exporter, constant folding) and check the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about every Python-level shape value and the eager NMS loop; the graphs are verified instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            graph.module.eval(),
            graph.example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_axes=graph.dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    _declare_static_output_dims(model, graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _declare_static_output_dims(model: onnx.ModelProto, graph: Graph) -> None:
    """Write the fixed output dims that ONNX shape inference could not follow (it names them instead).

    Every axis not declared dynamic has the size it had when traced; Triton compares these with the model config.
    """
    with torch.no_grad():
        traced = graph.module(*graph.example)
    traced = traced if isinstance(traced, tuple) else (traced,)
    for output, example in zip(model.graph.output, traced, strict=True):
        dynamic = graph.dynamic_axes.get(output.name, {})
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):
            if axis not in dynamic:
                dim.dim_value = example.shape[axis]


def export_all(out_dir: Path, graphs: dict[str, Graph]) -> dict[str, Path]:
    """Write ``<name>.onnx`` for every graph into ``out_dir``."""
    return {name: export_graph(graph, Path(out_dir) / f"{name}.onnx") for name, graph in graphs.items()}


def weight_arguments(parser: argparse.ArgumentParser) -> None:
    """The weight options shared by the export and verification commands, and the K of the detector graph."""
    parser.add_argument("--detector-weights", type=Path, help="YOLOv5 checkpoint (default: alpr/weights/detector.pt)")
    parser.add_argument("--lprnet-weights", type=Path, help="LPRNet checkpoint (default: alpr/weights/lprnet.pt)")
    parser.add_argument("--stn-weights", type=Path, help="STN checkpoint (default: alpr/weights/stn.pt)")
    parser.add_argument(
        "--max-plates",
        type=int,
        default=spec.MAX_PLATES,
        help="K, detections kept per image (verify reads the graph's)",
    )
    parser.add_argument(
        "--tile-grid",
        type=int,
        default=spec.TILE_GRID,
        help="G: the detector sees the whole image and GxG tiles; 1: the whole image alone (verify reads the graph's)",
    )
    parser.add_argument(
        "--random-init", action="store_true", help="untrained (seeded) networks where no weights are given, for tests"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init")


def networks_from_arguments(args: argparse.Namespace) -> Networks:
    """The networks that the options of ``weight_arguments`` name."""
    return load_networks(args.detector_weights, args.lprnet_weights, args.stn_weights, args.random_init, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write <step>.onnx")
    weight_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    try:
        networks = networks_from_arguments(args)
    except FileNotFoundError as missing:
        parser.error(str(missing))
    graphs = served_graphs(networks, args.max_plates, tile_grid=args.tile_grid)
    for name, path in export_all(args.out_dir, graphs).items():
        print(f"{name:<10} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
