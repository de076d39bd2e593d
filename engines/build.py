"""Build the TensorRT plans of a generated ``tensorrt`` model repository from the exported ONNX graphs.

The repository (``alpr/serving/repository.py``, target ``tensorrt``) decides what each step runs on. For every model
whose config says ``platform: "tensorrt_plan"`` this tool builds ``<repository>/<model>/1/model.plan`` from
``<onnx-dir>/<model>.onnx``, or from the TensorRT variant of ``export/tensorrt_variant.py`` where there is one
(``detector_trt.onnx``, whose NMS is the ``EfficientNMS_TRT`` plugin; ``preprocess_trt.onnx`` and ``crop_trt.onnx``,
which convert the uint8 image to float first); a step the repository serves with ``onnxruntime_onnx`` gets its
ONNX graph copied.

Optimization profiles come from the configs themselves, so a plan always accepts what Triton will send it:
a batching model (``max_batch_size`` B > 0) gets batch 1..B, optimised for its largest preferred batch size; an
``[H, W, 3]`` image input gets sides MIN_IMAGE_SIDE..MAX_IMAGE_SIDE, optimised for a 1080x1920 frame; the crop
step's per-view inputs ``[V, ...]`` get 1 view (an image that fits the canvas) up to the most views of any tile grid.

Precision: ``fp16`` by default. ``preprocess`` and ``crop`` compute pixel positions and uint8 pixels, which must
stay exact, so they are always built in fp32. ``int8`` quantizes the detector and LPRNet with entropy calibration
caches (``--calibration-dir``, one ``<model>.cache`` each; ``--calibrate`` makes them from synthetic scenes and real
photos, see ``engines/calibration.py``); the STN stays fp16 under int8, because an error in its affine parameters
moves the whole crop.

Plans are specific to the GPU model and the TensorRT version, so each is cached under
``<cache-dir>/<gpu>-trt<version>/<model>-<precision>-<digest>.plan``, the digest covering the ONNX graph, the profile,
the precision and the calibration cache; a second start on the same GPU copies the cached plans in seconds.

The TensorRT Python API is used when ``import tensorrt`` works, else ``trtexec`` from PATH (or TensorRT's usual
``/usr/src/tensorrt/bin``); ``--builder`` forces one. Neither present is an error that says how to get them.

    python -m engines.build --onnx-dir build/onnx --repository build/repository-tensorrt [--precision fp16]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tritonclient.grpc import model_config_pb2 as mc

from alpr import spec
from alpr.serving.repository import MAX_TILE_GRID, read_config
from engines.calibration import CalibrationBatches, calibration_images, entropy_calibrator

PRECISIONS = ("fp32", "fp16", "int8")
# Steps that compute pixel positions and uint8 pixels: any reduced precision would change their answers.
EXACT_STEPS = frozenset({"preprocess", "crop"})
# Steps quantized under --precision int8; the others fall back to fp16 (STN) or fp32 (EXACT_STEPS).
INT8_STEPS = frozenset({"detector", "lprnet"})
# The TensorRT variants (export/tensorrt_variant.py) that plans are built from; the other steps use "<step>.onnx".
TENSORRT_GRAPHS = {"detector": "detector_trt.onnx", "preprocess": "preprocess_trt.onnx", "crop": "crop_trt.onnx"}
OPTIMAL_IMAGE_SIDES = (1080, 1920)
DEFAULT_WORKSPACE_GIB = 4.0
TRTEXEC_FALLBACK = Path("/usr/src/tensorrt/bin/trtexec")
GPU_NAME_ENV = "ALPR_GPU_NAME"
PLAN_PLATFORM = spec.TENSORRT_PLATFORM
ONNX_PLATFORM = spec.ONNXRUNTIME_PLATFORM
OUTPUT_TAIL_CHARS = 4000


class BuildError(RuntimeError):
    """A plan could not be built; the message says which and why."""


class BuilderNotFoundError(BuildError):
    """Neither the TensorRT Python API nor ``trtexec`` is available."""


@dataclass(frozen=True)
class ShapeRange:
    """The shapes an input of a plan accepts (``minimum`` .. ``maximum``) and the one TensorRT tunes for."""

    minimum: tuple[int, ...]
    optimum: tuple[int, ...]
    maximum: tuple[int, ...]


@dataclass(frozen=True)
class PlanJob:
    """One plan to build: the model, its ONNX graph, precision, input profile and (int8) calibration cache."""

    model: str
    onnx: Path
    precision: str
    profile: dict[str, ShapeRange]
    calibration_cache: Path | None = None


class PlanBuilder(Protocol):
    """What both builders offer."""

    name: str

    def version(self) -> str: ...

    def build(self, job: PlanJob, plan: Path, workspace_bytes: int) -> None: ...


# Configs and profiles.


def is_image_dims(dims: Sequence[int]) -> bool:
    """``[H, W, 3]`` with dynamic sides: the shape of the pipeline's image tensors."""
    return len(dims) == 3 and dims[0] == -1 and dims[1] == -1 and dims[2] == 3


def is_views_dims(dims: Sequence[int]) -> bool:
    """``[V, ...]`` with only the views dynamic: one image's detector outputs, as the crop step takes them."""
    return len(dims) > 1 and dims[0] == -1 and -1 not in dims[1:]


def input_profile(config: mc.ModelConfig) -> dict[str, ShapeRange]:
    """Optimization profile of every input of ``config``: batch range and image sides, as described above."""
    profile = {}
    for tensor in config.input:
        dims = list(tensor.dims)
        if is_image_dims(dims):
            low = (spec.MIN_IMAGE_SIDE, spec.MIN_IMAGE_SIDE, 3)
            best = (*OPTIMAL_IMAGE_SIDES, 3)
            high = (spec.MAX_IMAGE_SIDE, spec.MAX_IMAGE_SIDE, 3)
        elif config.max_batch_size == 0 and is_views_dims(dims):
            # From the whole view alone (an image that fits the canvas) to the most views the export allows.
            low, best = (1, *dims[1:]), (spec.DETECTOR_VIEWS, *dims[1:])
            high = (spec.detector_views(MAX_TILE_GRID), *dims[1:])
        elif -1 in dims:
            raise BuildError(f"{config.name}: input {tensor.name} has dynamic dims {dims} that no profile rule covers")
        else:
            low = best = high = tuple(dims)
        if config.max_batch_size > 0:
            preferred = list(config.dynamic_batching.preferred_batch_size)
            optimal_batch = max(preferred) if preferred else config.max_batch_size
            low, best, high = (1, *low), (optimal_batch, *best), (config.max_batch_size, *high)
        profile[tensor.name] = ShapeRange(low, best, high)
    return profile


def step_precision(model: str, requested: str) -> str:
    """The precision ``model`` is built in when ``requested`` is asked for."""
    if model in EXACT_STEPS:
        return "fp32"
    if requested == "int8" and model not in INT8_STEPS:
        return "fp16"
    return requested


def onnx_path(onnx_dir: Path, model: str) -> Path:
    """The ONNX graph a step's plan is built from."""
    return onnx_dir / TENSORRT_GRAPHS.get(model, f"{model}.onnx")


# Where plans are cached.


def gpu_name(device: int = 0) -> str:
    """Name of CUDA device ``device`` from the driver (``$ALPR_GPU_NAME`` overrides), e.g. "NVIDIA H100 80GB HBM3"."""
    configured = os.environ.get(GPU_NAME_ENV)
    if configured:
        return configured
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        raise BuildError(
            f"no CUDA driver ({error}); run with a GPU (docker run --gpus ...) or set {GPU_NAME_ENV}"
        ) from error
    handle = ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    for status in (
        cuda.cuInit(0),
        cuda.cuDeviceGet(ctypes.byref(handle), device),
        cuda.cuDeviceGetName(name, len(name), handle),
    ):
        if status != 0:
            raise BuildError(f"the CUDA driver answered error {status} while naming device {device}")
    return name.value.decode()


def slug(text: str) -> str:
    """``text`` as a folder name: lower case, runs of other characters turned into one dash."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def plan_digest(job: PlanJob) -> str:
    """Hash of everything that shapes a plan besides the GPU and the TensorRT version."""
    digest = hashlib.sha256(job.onnx.read_bytes())
    profile = {name: [r.minimum, r.optimum, r.maximum] for name, r in sorted(job.profile.items())}
    digest.update(json.dumps({"precision": job.precision, "profile": profile}, sort_keys=True).encode())
    if job.calibration_cache is not None:
        digest.update(job.calibration_cache.read_bytes())
    return digest.hexdigest()[:16]


def cached_plan_path(cache_dir: Path, gpu: str, trt_version: str, job: PlanJob) -> Path:
    """``<cache>/<gpu>-trt<version>/<model>-<precision>-<digest>.plan``."""
    return cache_dir / f"{slug(gpu)}-trt{trt_version}" / f"{job.model}-{job.precision}-{plan_digest(job)}.plan"


# Builders.


class TensorRTPython:
    """Builds plans with the TensorRT Python API, registering TensorRT's plugins (EfficientNMS_TRT among them)."""

    name = "TensorRT Python API"

    def __init__(self) -> None:
        import tensorrt

        self.trt = tensorrt
        self.logger = tensorrt.Logger(tensorrt.Logger.WARNING)
        tensorrt.init_libnvinfer_plugins(self.logger, "")

    def version(self) -> str:
        return ".".join(self.trt.__version__.split(".")[:3])

    def build(self, job: PlanJob, plan: Path, workspace_bytes: int, calibrator: object | None = None) -> None:
        """Build ``job`` into ``plan``; int8 replays the job's calibration cache unless ``calibrator`` is given."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(job.onnx)):
            errors = "\n".join(str(parser.get_error(index)) for index in range(parser.num_errors))
            raise BuildError(f"{job.model}: TensorRT cannot parse {job.onnx}:\n{errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        profile = builder.create_optimization_profile()
        for index in range(network.num_inputs):
            name = network.get_input(index).name
            if name not in job.profile:
                raise BuildError(f"{job.model}: the graph input {name!r} is not in the model config")
            shapes = job.profile[name]
            profile.set_shape(name, shapes.minimum, shapes.optimum, shapes.maximum)
        config.add_optimization_profile(profile)
        if job.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if job.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator or calibration_cache_reader(trt, job)
            # Calibration batches come at the profile's optimum shape.
            config.set_calibration_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BuildError(f"{job.model}: TensorRT could not build an engine from {job.onnx} (see its log above)")
        plan.write_bytes(bytes(serialized))


class Trtexec:
    """Builds plans with the ``trtexec`` command-line tool."""

    name = "trtexec"

    def __init__(self, executable: Path) -> None:
        self.executable = executable

    def version(self) -> str:
        # Every run of trtexec starts with "&&&& RUNNING TensorRT.trtexec [TensorRT v101303] ...".
        result = subprocess.run([str(self.executable), "--help"], capture_output=True, text=True, check=False)
        match = re.search(r"TensorRT v(\d+)", result.stdout + result.stderr)
        if match is None:
            raise BuildError(f"cannot read the TensorRT version from {self.executable} --help")
        number = int(match.group(1))
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"

    def command(self, job: PlanJob, plan: Path, workspace_bytes: int) -> list[str]:
        """The trtexec command line that builds ``job`` into ``plan``."""

        def shapes(pick: str) -> str:
            return ",".join(
                f"{name}:{'x'.join(str(d) for d in getattr(r, pick))}" for name, r in sorted(job.profile.items())
            )

        command = [
            str(self.executable),
            f"--onnx={job.onnx}",
            f"--saveEngine={plan}",
            f"--minShapes={shapes('minimum')}",
            f"--optShapes={shapes('optimum')}",
            f"--maxShapes={shapes('maximum')}",
            f"--memPoolSize=workspace:{workspace_bytes // 2**20}",
            "--skipInference",
        ]
        if job.precision in ("fp16", "int8"):
            command.append("--fp16")
        if job.precision == "int8":
            command += ["--int8", f"--calib={job.calibration_cache}"]
        return command

    def build(self, job: PlanJob, plan: Path, workspace_bytes: int) -> None:
        result = subprocess.run(self.command(job, plan, workspace_bytes), capture_output=True, text=True, check=False)
        if result.returncode != 0 or not plan.is_file():
            tail = (result.stdout + result.stderr)[-OUTPUT_TAIL_CHARS:]
            raise BuildError(f"{job.model}: trtexec failed with exit code {result.returncode}:\n{tail}")


def find_trtexec() -> Path | None:
    """``trtexec`` on PATH, else where TensorRT's packages install it."""
    on_path = shutil.which("trtexec")
    if on_path:
        return Path(on_path)
    return TRTEXEC_FALLBACK if TRTEXEC_FALLBACK.is_file() else None


def find_builder(preference: str = "auto") -> PlanBuilder:
    """The TensorRT Python API if importable (``auto`` or ``python``), else ``trtexec`` (``auto`` or ``trtexec``)."""
    if preference in ("auto", "python"):
        try:
            return TensorRTPython()
        except ImportError as error:
            if preference == "python":
                raise BuilderNotFoundError(f"the TensorRT Python API is not importable: {error}") from error
    executable = find_trtexec()
    if executable is not None:
        return Trtexec(executable)
    raise BuilderNotFoundError(
        "TensorRT is not available here: neither `import tensorrt` nor `trtexec` works. Build plans inside the "
        "image of Dockerfile.triton (its entrypoint does it at first start), or install the TensorRT wheel that "
        "matches your Triton release (e.g. pip install tensorrt-cu13==10.13.3.9) on a machine with an NVIDIA GPU."
    )


def calibration_cache_reader(trt: object, job: PlanJob) -> object:
    """An INT8 calibrator that only replays ``job.calibration_cache`` (made beforehand by ``--calibrate``)."""
    if job.calibration_cache is None:
        raise BuildError(f"{job.model}: int8 needs a calibration cache; make it with --calibrate")
    return entropy_calibrator(trt, job.calibration_cache, batches=None)


# The repository.


def plan_jobs(
    repository: Path,
    onnx_dir: Path,
    precision: str,
    models: Sequence[str] | None = None,
    calibration_dir: Path | None = None,
    *,
    require_cache: bool = True,
) -> Iterator[tuple[mc.ModelConfig, PlanJob]]:
    """A job for every ``tensorrt_plan`` model of ``repository`` (or of ``models`` among them).

    An int8 job names its calibration cache, which must exist unless ``require_cache`` is False (when calibrating).
    """
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = read_config(config_path)
        if config.platform != PLAN_PLATFORM or (models and config.name not in models):
            continue
        graph = onnx_path(onnx_dir, config.name)
        if not graph.is_file():
            raise BuildError(f"{graph} is missing: export the graphs (make onnx, export/tensorrt_variant.py)")
        model_precision = step_precision(config.name, precision)
        cache = None
        if model_precision == "int8":
            cache = (calibration_dir or Path("engines/calibration")) / f"{config.name}.cache"
            if require_cache and not cache.is_file():
                raise BuildError(f"{config.name}: int8 needs the calibration cache {cache}; make it with --calibrate")
        yield config, PlanJob(config.name, graph, model_precision, input_profile(config), cache)


def write_calibration_caches(
    builder: object, repository: Path, onnx_dir: Path, calibration_dir: Path, photos: Sequence[Path] = ()
) -> None:
    """Calibrate every int8 step of ``repository`` and write ``<calibration_dir>/<model>.cache``."""
    if not isinstance(builder, TensorRTPython):
        raise BuildError("calibration runs inside TensorRT's builder: it needs the TensorRT Python API, not trtexec")
    batches = CalibrationBatches(onnx_dir, list(calibration_images(photos)))
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = read_config(config_path)
        steps = {"detector": batches.detector, "lprnet": batches.lprnet}
        if config.name not in steps:
            continue
        cache = calibration_dir / f"{config.name}.cache"
        cache.unlink(missing_ok=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        (_, job), *_ = plan_jobs(repository, onnx_dir, "int8", [config.name], calibration_dir, require_cache=False)
        optimal_batch = job.profile[next(iter(job.profile))].optimum[0]
        calibrator = entropy_calibrator(builder.trt, cache, steps[config.name](optimal_batch))
        scratch = cache.with_suffix(".calibration.plan")
        try:
            builder.build(job, scratch, 2**30, calibrator=calibrator)
        except BaseException:
            cache.unlink(missing_ok=True)  # never leave a partial cache to be replayed
            raise
        finally:
            scratch.unlink(missing_ok=True)
        print(f"  {config.name:<11} calibration cache -> {cache}", flush=True)


def copy_onnx_steps(repository: Path, onnx_dir: Path) -> list[str]:
    """Copy the graph of every ``onnxruntime_onnx`` step of the repository into place; their names."""
    copied = []
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = read_config(config_path)
        if config.platform != ONNX_PLATFORM:
            continue
        target = config_path.parent / spec.MODEL_VERSION / (config.default_model_filename or "model.onnx")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_dir / f"{config.name}.onnx", target)
        copied.append(config.name)
    return copied


def build_plan(builder: PlanBuilder, job: PlanJob, cached: Path, workspace_bytes: int, force: bool) -> bool:
    """Build ``job`` into ``cached`` unless it is there already; True when it was built now."""
    if cached.is_file() and not force:
        return False
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the cache entry and rename: a crash or a concurrent builder never leaves half a plan there.
    with tempfile.TemporaryDirectory(dir=cached.parent) as scratch:
        partial = Path(scratch) / cached.name
        builder.build(job, partial, workspace_bytes)
        os.replace(partial, cached)
    return True


def build_repository(
    repository: Path,
    onnx_dir: Path,
    *,
    precision: str = "fp16",
    cache_dir: Path = Path("engines/cache"),
    builder: PlanBuilder | None = None,
    models: Sequence[str] | None = None,
    calibration_dir: Path | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    force: bool = False,
) -> None:
    """Put a plan (or, for onnxruntime steps, the ONNX graph) into every graph step of ``repository``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    builder = builder or find_builder()
    trt_version = builder.version()
    gpu = gpu_name()
    print(f"TensorRT {trt_version} ({builder.name}) on {gpu}; plans cached in {cache_dir}", flush=True)
    workspace_bytes = int(workspace_gib * 2**30)
    # Every job is checked (graph present, calibration cache present) before the first, slow build starts.
    jobs = list(plan_jobs(repository, onnx_dir, precision, models, calibration_dir))
    for config, job in jobs:
        cached = cached_plan_path(cache_dir, gpu, trt_version, job)
        started = time.perf_counter()
        built = build_plan(builder, job, cached, workspace_bytes, force)
        target = repository / config.name / spec.MODEL_VERSION / (config.default_model_filename or "model.plan")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, target)
        how = f"built in {time.perf_counter() - started:.0f} s" if built else "cached"
        print(f"  {config.name:<11} {job.precision:<5} {how:<16} -> {target}", flush=True)
    for name in copy_onnx_steps(repository, onnx_dir):
        print(f"  {name:<11} onnx  copied           -> {repository / name / spec.MODEL_VERSION}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx-dir", type=Path, required=True, help="exported graphs: <step>.onnx, detector_trt.onnx")
    parser.add_argument("--repository", type=Path, required=True, help="a repository generated for the tensorrt target")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="default: %(default)s")
    parser.add_argument("--cache-dir", type=Path, default=Path("engines/cache"), help="default: %(default)s")
    parser.add_argument(
        "--calibration-dir", type=Path, default=Path("engines/calibration"), help="int8 caches; default: %(default)s"
    )
    parser.add_argument(
        "--calibrate", action="store_true", help="(re)make the int8 calibration caches first (needs the dev install)"
    )
    parser.add_argument("--calibration-images", type=Path, nargs="*", default=(), help="real photos to add")
    parser.add_argument("--models", nargs="*", help="only these steps (default: every tensorrt_plan step)")
    parser.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto", help="default: %(default)s")
    parser.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB, help="default: %(default)s")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached plan matches")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        builder = find_builder(args.builder)
        if args.calibrate:
            write_calibration_caches(
                builder, args.repository, args.onnx_dir, args.calibration_dir, args.calibration_images
            )
        build_repository(
            args.repository,
            args.onnx_dir,
            precision=args.precision,
            cache_dir=args.cache_dir,
            builder=builder,
            models=args.models,
            calibration_dir=args.calibration_dir,
            workspace_gib=args.workspace_gib,
            force=args.force,
        )
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
