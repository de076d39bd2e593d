"""The Triton model repository of the pipeline, generated from one description for every serving target.

Targets:
  cpu          the Triton build bundled in nvidia-pytriton: each ONNX step runs in the Python-based backend
               ``onnxruntime_python`` (``alpr/serving/steps/onnxruntime_python.py``, one runner for all of them),
               except ``preprocess``, whose views OpenCV draws far faster (``alpr/serving/steps/letterbox.py``)
  onnxruntime  the official tritonserver image: each ONNX step on the native ``onnxruntime_onnx`` platform
  tensorrt     the official image on a GPU: each graph step as a ``tensorrt_plan`` engine on KIND_GPU instances

The ensembles ``plate_recognition`` (raw pixels in) and ``plate_recognition_encoded`` (an image file in, decoded by
the ``image_decoder`` step) and the Python steps are the same on all targets; only the five graph steps change
platform and instances (and ``preprocess`` its code on the cpu target). ``max_plates`` (K) and ``tile_grid`` (G,
hence V views per image) are the settings that the export and the configs share.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from alpr import spec
from alpr.serving.steps import step_source
from alpr.vocab import NUM_CLASSES

TARGETS = ("cpu", "onnxruntime", "tensorrt")
DECODER_SOURCE = step_source("ctc_decoder")
IMAGE_DECODER_SOURCE = step_source("image_decoder")
LETTERBOX_SOURCE = step_source("letterbox")

# Scheduling of the batching steps. The delay lets requests that arrive together share one session call; the queue
# policy refuses work at once when the queue is full, and after the timeout when the server cannot keep up. The
# timeout sits well above the queueing of a loaded small machine (8 requests in flight on 2 CPU cores wait up to
# about 2.5 s with five detector views per image), so that only a backlog the server cannot work off is refused.
BATCH_QUEUE_DELAY_US = 500
QUEUE_TIMEOUT_US = 5_000_000
ENTRY_QUEUE_SIZE = 64
THREADS_PER_INSTANCE = 1
# A BGR image of any size.
IMAGE = ("UINT8", (-1, -1, 3))
# Rate-limiter resource of the GPU steps' instances, and how many may execute at once on one GPU.
GPU_EXECUTIONS = "gpu_executions"
GPU_CONCURRENT_EXECUTIONS = 2
# More tiles than this would make the detector's batch of one image's views exceed any sensible GPU profile.
MAX_TILE_GRID = 4


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a step: name, Triton data type and dims (without the batch dimension)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Scheduling:
    """How Triton schedules one step: instances per target kind, dynamic batching and its queue.

    CPU steps run single-threaded instances: the steps of successive requests already overlap. The detector, the
    heaviest step, gets two, so that it alone can keep both cores of a small machine busy (Model Analyzer's
    recommendation, benchmarks/analysis/SUMMARY.md; with one instance it capped the ensemble at one core's worth,
    benchmarks/RESULTS.md). A second instance of the light steps costs a process and its memory for no measured gain.
    """

    cpu_instances: int = 1
    gpu_instances: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()
    # Bounded queue with REJECT: only on the steps where requests wait (the entry and the batching steps).
    max_queue_size: int = 0
    dynamic_batching: bool = False


@dataclass(frozen=True)
class Step:
    """A composing model of the ensemble."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    scheduling: Scheduling
    note: str
    # A step written in Python (its code in the repository) instead of an exported graph.
    python_code: bool = False
    # A graph step that the cpu target serves with this Python code instead (same tensors, same results), and the
    # settings that the graph has built in and the code reads from its config's parameters.
    cpu_code: Path | None = None
    cpu_parameters: tuple[tuple[str, str], ...] = ()


def _tensor(name: str, data_type: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, f"TYPE_{data_type}", tuple(dims))


def _tensors(names: tuple[str, ...], *kinds: tuple[str, tuple[int, ...]]) -> tuple[TensorSpec, ...]:
    """The tensors ``names`` (a step's, from ``spec.STEP_TENSORS``) with their (data type, dims), in order."""
    return tuple(_tensor(name, data_type, *dims) for name, (data_type, dims) in zip(names, kinds, strict=True))


def graph_steps(max_plates: int = spec.MAX_PLATES, tile_grid: int = spec.TILE_GRID) -> tuple[Step, ...]:
    """The five steps exported as graphs (preprocess, detector, crop, stn, lprnet), per ARCHITECTURE.md."""
    if not 1 <= max_plates <= spec.RECOGNISER_MAX_BATCH:
        raise ValueError(f"max_plates must lie in [1, {spec.RECOGNISER_MAX_BATCH}], got {max_plates}")
    if not 1 <= tile_grid <= MAX_TILE_GRID:
        raise ValueError(f"tile_grid must lie in [1, {MAX_TILE_GRID}], got {tile_grid}")
    size, k, views = spec.DETECTOR_SIZE, max_plates, spec.detector_views(tile_grid)
    tiles = f"the whole image and {tile_grid}x{tile_grid} tiles" if tile_grid > 1 else "the whole image"
    crop = (3, spec.CROP_HEIGHT, spec.CROP_WIDTH)
    return (
        Step(
            name="preprocess",
            inputs=_tensors(spec.step_inputs("preprocess"), IMAGE),
            outputs=_tensors(spec.step_outputs("preprocess"), ("UINT8", (-1, 3, size, size))),
            max_batch_size=0,
            scheduling=Scheduling(max_queue_size=ENTRY_QUEUE_SIZE, dynamic_batching=True),
            note=(
                f"Up to {views} view(s), {tiles} (tiles only when the long side exceeds "
                f"{spec.TILES_ABOVE_SIDE} px), each letterboxed to 640x640 RGB planes. "
                "The entry step: its bounded queue refuses overload."
            ),
            cpu_code=LETTERBOX_SOURCE,
            cpu_parameters=(("tile_grid", str(tile_grid)),),
        ),
        Step(
            name="detector",
            inputs=_tensors(spec.step_inputs("detector"), ("UINT8", (3, size, size))),
            outputs=_tensors(spec.step_outputs("detector"), ("INT32", (1,)), ("FP32", (k, 4)), ("FP32", (k,))),
            max_batch_size=spec.DETECTOR_IMAGES_PER_BATCH * views,
            scheduling=Scheduling(
                cpu_instances=2,
                gpu_instances=2,
                preferred_batch_sizes=(2 * views, spec.DETECTOR_IMAGES_PER_BATCH * views),
                max_queue_size=ENTRY_QUEUE_SIZE,
                dynamic_batching=True,
            ),
            note=f"YOLOv5 with NMS in the graph, padded to K = {k} boxes per view; one image sends {views} views.",
        ),
        Step(
            name="crop",
            inputs=_tensors(
                spec.step_inputs("crop"),
                IMAGE,
                ("INT32", (-1, 1)),
                ("FP32", (-1, k, 4)),
                ("FP32", (-1, k)),
            ),
            outputs=_tensors(spec.step_outputs("crop"), ("FP32", (-1, *crop)), ("FP32", (-1, 4)), ("FP32", (-1,))),
            max_batch_size=0,
            scheduling=Scheduling(),
            note=(
                "The views merged by suppression; plate crops from the original image: M = max(plates, 1) rows, "
                "padding scored 0."
            ),
        ),
        Step(
            name="stn",
            inputs=_tensors(spec.step_inputs("stn"), ("FP32", crop)),
            outputs=_tensors(spec.step_outputs("stn"), ("FP32", crop)),
            max_batch_size=spec.RECOGNISER_MAX_BATCH,
            scheduling=Scheduling(
                preferred_batch_sizes=(8, 16), max_queue_size=4 * ENTRY_QUEUE_SIZE, dynamic_batching=True
            ),
            note="Spatial transformer: the crops of one image arrive as one batch; the batcher merges images.",
        ),
        Step(
            name="lprnet",
            inputs=_tensors(spec.step_inputs("lprnet"), ("FP32", crop)),
            outputs=_tensors(spec.step_outputs("lprnet"), ("FP32", (NUM_CLASSES, spec.LPRNET_STEPS))),
            max_batch_size=spec.RECOGNISER_MAX_BATCH,
            scheduling=Scheduling(
                preferred_batch_sizes=(8, 16), max_queue_size=4 * ENTRY_QUEUE_SIZE, dynamic_batching=True
            ),
            note="LPRNet: per-step class scores for greedy CTC.",
        ),
    )


def served_code(step: Step, target: str) -> Path | None:
    """The Python code with which ``target`` serves the graph step ``step`` instead of its graph, if any."""
    return step.cpu_code if target == "cpu" else None


def decoder_step() -> Step:
    """The Python step closing the pipeline: greedy CTC, plate confidence, padding rows dropped."""
    return Step(
        name="ctc_decoder",
        inputs=_tensors(
            spec.step_inputs("ctc_decoder"),
            ("FP32", (-1, NUM_CLASSES, spec.LPRNET_STEPS)),
            ("FP32", (-1, 4)),
            ("FP32", (-1,)),
        ),
        outputs=_tensors(
            spec.step_outputs("ctc_decoder"), ("FP32", (-1, 4)), ("FP32", (-1,)), ("STRING", (-1,)), ("FP32", (-1,))
        ),
        max_batch_size=0,
        scheduling=Scheduling(),
        python_code=True,
        note=(
            "Greedy CTC and plate confidence in NumPy; padding rows (plate_scores == 0) are dropped, so N <= M. "
            "max_batch_size 0 with full shapes: as a batching model Triton 2.51 rejects the rank-1 plate_scores [M] "
            "(it expects [M, 1]) and cannot return rank-1 outputs with zero rows (N = 0); the work is microseconds "
            "per plate, so one instance without a batcher serves it."
        ),
    )


def image_decoder_step() -> Step:
    """The Python step opening ``plate_recognition_encoded``: one image file in, its BGR pixels out."""
    return Step(
        name="image_decoder",
        inputs=_tensors(spec.step_inputs("image_decoder"), ("STRING", (1,))),
        outputs=_tensors(spec.step_outputs("image_decoder"), IMAGE),
        max_batch_size=0,
        scheduling=Scheduling(max_queue_size=ENTRY_QUEUE_SIZE, dynamic_batching=True),
        python_code=True,
        note=(
            "One JPEG, PNG, WebP, BMP or TIFF file decoded with OpenCV as cv2.imread reads it; sides checked from the "
            "header before decoding. The entry step of plate_recognition_encoded: its bounded queue refuses overload."
        ),
    )


def python_steps() -> tuple[tuple[Step, Path], ...]:
    """The steps written in Python, with their code."""
    return ((decoder_step(), DECODER_SOURCE), (image_decoder_step(), IMAGE_DECODER_SOURCE))


def _parameters(config: mc.ModelConfig, values: dict[str, str]) -> None:
    for key, value in sorted(values.items()):
        config.parameters[key].string_value = value


def _io(config: mc.ModelConfig, step: Step) -> None:
    for tensor, target in [(t, config.input) for t in step.inputs] + [(t, config.output) for t in step.outputs]:
        entry = target.add()
        entry.name = tensor.name
        entry.data_type = mc.DataType.Value(tensor.data_type)
        entry.dims.extend(tensor.dims)


def _scheduling(config: mc.ModelConfig, scheduling: Scheduling) -> None:
    if not scheduling.dynamic_batching:
        return
    batching = config.dynamic_batching
    if config.max_batch_size > 0:
        batching.preferred_batch_size.extend(scheduling.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = BATCH_QUEUE_DELAY_US
    # Two priority levels: live camera frames (the default) ahead of backfill from archives. Each level queues apart,
    # bounded by the same policy, and a batch is filled from the live queue first.
    batching.priority_levels = len(spec.PRIORITIES)
    batching.default_priority_level = spec.PRIORITIES["live"]
    policy = batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = QUEUE_TIMEOUT_US
    policy.allow_timeout_override = True
    policy.max_queue_size = scheduling.max_queue_size


def step_config(step: Step, target: str) -> mc.ModelConfig:
    """The Triton config of one composing model on ``target``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    config = mc.ModelConfig(name=step.name, max_batch_size=step.max_batch_size)
    _io(config, step)
    _scheduling(config, step.scheduling)
    group = config.instance_group.add()
    if step.python_code or served_code(step, target) is not None:
        config.backend = spec.PYTHON_BACKEND
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.count = step.scheduling.cpu_instances
        _parameters(config, dict(step.cpu_parameters))
        return config
    if target == "tensorrt":
        config.platform = spec.TENSORRT_PLATFORM
        config.default_model_filename = "model.plan"
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.count = step.scheduling.gpu_instances
        # With --rate-limit=execution_count (deploy/entrypoint.sh), an instance runs only while it holds one unit of
        # GPU_EXECUTIONS, of which the server has GPU_CONCURRENT_EXECUTIONS per device: the steps' instances cannot
        # oversubscribe the GPU, and the queues (live first) decide who runs next.
        resource = group.rate_limiter.resources.add()
        resource.name = GPU_EXECUTIONS
        resource.count = 1
        return config
    group.kind = mc.ModelInstanceGroup.KIND_CPU
    group.count = step.scheduling.cpu_instances
    config.default_model_filename = "model.onnx"
    threads = str(THREADS_PER_INSTANCE)
    if target == "cpu":
        config.backend = spec.ONNXRUNTIME_PYTHON_BACKEND
        _parameters(config, {"intra_op_threads": threads, "inter_op_threads": threads})
    else:
        config.platform = spec.ONNXRUNTIME_PLATFORM
        _parameters(config, {"intra_op_thread_count": threads, "inter_op_thread_count": threads})
    return config


# The ensemble's tensors take the names of the step tensors they connect, except these: the detector's det_scores
# would clash with the ensemble's own det_scores output, and the views are named for what they are.
ENSEMBLE_RENAMED = {spec.VIEWS: "letterboxed", spec.DET_SCORES: "padded_det_scores"}


def ensemble_wiring(steps: tuple[str, ...] = spec.PIPELINE_STEPS) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """The dataflow of one request: (step, {step input: ensemble tensor}, {step output: ensemble tensor})."""
    wiring = []
    for step in steps:
        final = step == steps[-1]
        inputs = {name: ENSEMBLE_RENAMED.get(name, name) for name in spec.step_inputs(step)}
        outputs = {name: name if final else ENSEMBLE_RENAMED.get(name, name) for name in spec.step_outputs(step)}
        wiring.append((step, inputs, outputs))
    return wiring


def ensemble_config(encoded: bool = False) -> mc.ModelConfig:
    """The ensemble ``plate_recognition`` (one image in, its plates out), or with ``encoded`` the same pipeline behind
    ``image_decoder`` as ``plate_recognition_encoded`` (one image file in); the same on every target."""
    name = spec.ENCODED_ENSEMBLE_NAME if encoded else spec.ENSEMBLE_NAME
    entry = image_decoder_step().inputs if encoded else _tensors((spec.IMAGE_INPUT,), IMAGE)
    config = mc.ModelConfig(name=name, platform=spec.ENSEMBLE_PLATFORM, max_batch_size=0)
    _io(
        config,
        Step(
            name=name, inputs=entry, outputs=decoder_step().outputs, max_batch_size=0, scheduling=Scheduling(), note=""
        ),
    )
    steps = ("image_decoder", *spec.PIPELINE_STEPS) if encoded else spec.PIPELINE_STEPS
    for model_name, input_map, output_map in ensemble_wiring(steps):
        step = config.ensemble_scheduling.step.add()
        step.model_name = model_name
        step.model_version = -1
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return config


ENSEMBLE_NOTE = (
    "One BGR image UINT8 [H, W, 3] in; N plates out (N may be 0): boxes in image pixels, detector scores, texts and "
    "their confidence. Generated by alpr/serving/repository.py: edit that, not this file."
)
ENCODED_ENSEMBLE_NOTE = (
    "One image file BYTES [1] (JPEG, PNG, WebP, BMP or TIFF) in, decoded in the server; then the steps and outputs of "
    "plate_recognition. Generated by alpr/serving/repository.py: edit that, not this file."
)


def read_config(path: Path) -> mc.ModelConfig:
    """A ``config.pbtxt`` parsed."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def config_text(config: mc.ModelConfig, note: str) -> str:
    """``config.pbtxt`` text: a comment header, then the protobuf text format."""
    header = "".join(f"# {line}\n" for line in _wrap(note))
    return header + text_format.MessageToString(config)


def _wrap(text: str, width: int = 116) -> Iterable[str]:
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            yield line
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        yield line


def repository_files(target: str, max_plates: int = spec.MAX_PLATES, tile_grid: int = spec.TILE_GRID) -> dict[str, str]:
    """Every text file of the repository for ``target``, by relative path (configs and the decoder's code)."""
    files = {
        f"{spec.ENSEMBLE_NAME}/config.pbtxt": config_text(ensemble_config(), ENSEMBLE_NOTE),
        f"{spec.ENCODED_ENSEMBLE_NAME}/config.pbtxt": config_text(ensemble_config(encoded=True), ENCODED_ENSEMBLE_NOTE),
    }
    for step in (*graph_steps(max_plates, tile_grid), *(step for step, _ in python_steps())):
        note = f"{step.note} Generated by alpr/serving/repository.py for the {target} target."
        files[f"{step.name}/config.pbtxt"] = config_text(step_config(step, target), note)
    for step, source in python_steps():
        files[f"{step.name}/{spec.MODEL_VERSION}/model.py"] = source.read_text()
    for step in graph_steps(max_plates, tile_grid):
        code = served_code(step, target)
        if code is not None:
            files[f"{step.name}/{spec.MODEL_VERSION}/model.py"] = code.read_text()
    return files


def model_file_name(target: str) -> str:
    """The file a graph step's version directory holds on ``target``."""
    return "model.plan" if target == "tensorrt" else "model.onnx"


def write_repository(
    out_dir: str | Path,
    target: str,
    *,
    max_plates: int = spec.MAX_PLATES,
    tile_grid: int = spec.TILE_GRID,
    models_dir: str | Path | None = None,
) -> Path:
    """Write the repository for ``target`` into ``out_dir``; returns it.

    For the ONNX targets, ``models_dir`` holds the exported ``<step>.onnx`` of each graph step, copied to
    ``<step>/1/model.onnx``. Without it only configs and code are written (model files already there are kept), which
    is what the tensorrt target needs: ``python -m engines.build`` puts the plans in afterwards.
    """
    if models_dir is not None and target == "tensorrt":
        raise ValueError("the tensorrt target takes plans from python -m engines.build, not ONNX graphs")
    out = Path(out_dir)
    for relative, text in repository_files(target, max_plates, tile_grid).items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for ensemble in (spec.ENSEMBLE_NAME, spec.ENCODED_ENSEMBLE_NAME):
        (out / ensemble / spec.MODEL_VERSION).mkdir(exist_ok=True)
    for step in graph_steps(max_plates, tile_grid):
        version_dir = out / step.name / spec.MODEL_VERSION
        version_dir.mkdir(parents=True, exist_ok=True)
        if served_code(step, target) is not None:
            (version_dir / model_file_name(target)).unlink(missing_ok=True)  # served by its Python code
        elif models_dir is not None:
            source = Path(models_dir) / f"{step.name}.onnx"
            if not source.is_file():
                raise FileNotFoundError(f"{source} is missing: export the graphs first (export/to_onnx.py)")
            shutil.copyfile(source, version_dir / model_file_name(target))
    return out
