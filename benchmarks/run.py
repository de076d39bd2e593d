"""Measure the serving designs side by side and write ``benchmarks/RESULTS.md``.

    python -m benchmarks.run [--quick] [--out benchmarks/out] [--repository model_repository] [--url HOST:PORT]
                             [--skip-scaling]

1. Inputs: synthetic scenes at 640x480, 1280x720 and 1920x1080 with 0-4 plates (plus the shared real photos when
   present) written to ``<out>/images/`` and packed into a perf_analyzer ``--input-data`` JSON.
2. One Triton server serves the product repository and the BLS baseline repository (built under ``<out>``), unless
   ``--url`` names a running server. perf_analyzer drives ``plate_recognition`` and ``plate_recognition_bls`` over
   gRPC at each concurrency, plus one run with system shared memory; Triton's statistics give the per-step time.
3. The in-process floor runs the same graphs with onnxruntime at the same concurrencies, after the server stops.
4. Full runs also sweep image size and plates per image at a fixed concurrency.
5. ``results.json`` and the perf_analyzer CSVs go to ``<out>``; the report and plots to ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from alpr import realdata, spec
from alpr.metrics import box_iou, centre_inside
from alpr.paths import repo_root, shared_dir
from alpr.pipeline import STEPS, OnnxPipeline
from alpr.serving.repository import read_config
from alpr.serving.server import TritonServer
from benchmarks.baseline import BLS_MODEL_NAME, baseline_models, write_baseline_repository
from benchmarks.floor import floor_pipeline, measure_floor, served_file
from benchmarks.inputs import (
    MIXED_PLATE_COUNTS,
    SCALING_PLATE_COUNTS,
    SCALING_SIZES,
    BenchImage,
    SceneRequest,
    encoded_files,
    folder_images,
    mixed_scenes,
    plate_labels,
    read_images,
    real_photos,
    write_encoded_input_data,
    write_input_data,
    write_scenes,
)
from benchmarks.machine import describe_machine, git_commit
from benchmarks.perf_analyzer import (
    MeasurementSettings,
    PerfAnalyzerError,
    PerfMeasurement,
    measure,
    why_perf_analyzer_cannot_run,
)
from benchmarks.report import TARGET_CONCURRENCY_THROUGHPUT, write_report
from benchmarks.rounds import (
    BLS,
    DETECTOR,
    ENCODED,
    ENSEMBLE,
    FLOOR,
    DesignRun,
    DetectorAlone,
    Rounds,
    measure_in_process,
    run_rounds,
    sgemm_peak_gflops,
)
from benchmarks.server_stats import read_counters, step_times

SEED = 20240601
# Size of the scenes in the plate-count sweep.
PLATE_SWEEP_SIZE = (720, 1280)
SERVER_STARTUP_TIMEOUT_S = 600.0
# One-request answers agree when boxes match to this many pixels and texts exactly.
BOX_TOLERANCE_PX = 1e-3


@dataclass(frozen=True)
class Profile:
    """How much a run measures."""

    name: str
    concurrencies: tuple[int, ...]
    settings: MeasurementSettings
    scenes_per_size: int
    floor_warmup_s: float
    floor_duration_s: float
    scaling: bool
    scaling_concurrency: int
    scaling_images_per_point: int
    shared_memory_concurrency: int = 1
    # Interleaved rounds (benchmarks/rounds.py) at the throughput target's concurrency.
    rounds: int = 3


# Full: about 10-15 minutes on 2 cores. Each level needs 3 windows within 15 % of each other (at most 8 windows).
FULL = Profile(
    name="full",
    concurrencies=(1, 2, 4, 8, 16),
    settings=MeasurementSettings(measurement_interval_ms=4000, stability_percentage=15, max_trials=8),
    scenes_per_size=5,
    floor_warmup_s=2.0,
    floor_duration_s=12.0,
    scaling=True,
    scaling_concurrency=4,
    scaling_images_per_point=3,
)
# Quick: the two concurrencies of the acceptance targets, short windows, no sweeps; a few minutes.
QUICK = Profile(
    name="quick",
    concurrencies=(1, 8),
    settings=MeasurementSettings(measurement_interval_ms=1500, stability_percentage=25, max_trials=5),
    scenes_per_size=2,
    floor_warmup_s=1.0,
    floor_duration_s=4.5,
    scaling=False,
    scaling_concurrency=4,
    scaling_images_per_point=2,
)


def graph_digests(repository: Path) -> dict[str, str]:
    """sha256 prefix of each served ONNX graph (or Python step), to tie the numbers to the weights they ran."""
    return {step: hashlib.sha256(served_file(repository, step).read_bytes()).hexdigest()[:12] for step in STEPS}


def composing_models(repository: Path) -> list[str]:
    """The ensemble, then its steps in order, as its config lists them."""
    config = read_config(repository / spec.ENSEMBLE_NAME / "config.pbtxt")
    return [spec.ENSEMBLE_NAME, *(step.model_name for step in config.ensemble_scheduling.step)]


@contextlib.contextmanager
def serving(args: argparse.Namespace, baseline_repository: Path) -> Iterator[tuple[str, str]]:
    """The gRPC URL and Triton version of a server with both repositories, started here unless ``--url`` is given."""
    if args.url:
        with grpcclient.InferenceServerClient(args.url) as client:
            yield args.url, client.get_server_metadata().version
        return
    server = TritonServer(
        args.repository,
        extra_args=(f"--model-repository={baseline_repository.resolve()}",),
        log_path=args.out / "server.log",
        startup_timeout_s=SERVER_STARTUP_TIMEOUT_S,
    )
    print(f"starting tritonserver on {args.repository} and {baseline_repository} (log {args.out / 'server.log'})")
    with server, grpcclient.InferenceServerClient(server.endpoints.grpc_url) as client:
        yield server.endpoints.grpc_url, client.get_server_metadata().version


def _infer(client: grpcclient.InferenceServerClient, model: str, image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    tensor = grpcclient.InferInput(spec.IMAGE_INPUT, list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    answer = client.infer(model, [tensor])
    return answer.as_numpy("boxes"), [text.decode() for text in answer.as_numpy("texts")]


def _same(first: tuple[np.ndarray, list[str]], second: tuple[np.ndarray, list[str]]) -> bool:
    boxes_a, texts_a = first
    boxes_b, texts_b = second
    same_boxes = boxes_a.shape == boxes_b.shape and np.allclose(boxes_a, boxes_b, atol=BOX_TOLERANCE_PX)
    return same_boxes and texts_a == texts_b


def compare_answers(
    client: grpcclient.InferenceServerClient, images: list[BenchImage], floor: OnnxPipeline, with_bls: bool
) -> tuple[dict[str, bool], dict[str, tuple[np.ndarray, list[str]]]]:
    """Send every image once to each design (this is also the warm-up) and compare their answers; returns the
    agreement and the ensemble's answer to each image."""
    agree = {"ensemble = floor": True}
    if with_bls:
        agree["ensemble = BLS"] = True
    answers = {}
    for item in images:
        ensemble = answers[item.name] = _infer(client, spec.ENSEMBLE_NAME, item.image)
        readings = floor(item.image)
        agree["ensemble = floor"] &= _same(ensemble, (readings.boxes, readings.texts))
        if with_bls:
            agree["ensemble = BLS"] &= _same(ensemble, _infer(client, BLS_MODEL_NAME, item.image))
    return agree, answers


def plates_read(
    answers: dict[str, tuple[np.ndarray, list[str]]], labels: dict[str, list[tuple[str, list[float]]]]
) -> dict[str, int]:
    """How many labelled plates of the answered images were read exactly: an answer whose box finds the plate (the
    real-photo criterion: centre inside, or IoU at least ``realdata.FOUND_IOU``) and whose text is its text."""
    plates = read = 0
    for name, (boxes, texts) in answers.items():
        for text, box in labels.get(name, []):
            plates += 1
            truth = np.array([box], np.float32)
            found = (box_iou(boxes, truth)[:, 0] >= realdata.FOUND_IOU) | centre_inside(boxes, truth)[:, 0]
            read += any(hit and answer == text for hit, answer in zip(found, texts, strict=True))
    return {"images": len(answers), "labelled_plates": plates, "read": read}


def measure_served(
    client: grpcclient.InferenceServerClient,
    *,
    model: str,
    models: list[str],
    url: str,
    input_data: Path,
    concurrency: int,
    out_dir: Path,
    settings: MeasurementSettings,
    shared_memory: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """One perf_analyzer measurement with the server-side time of ``models`` around it.

    A level perf_analyzer cannot complete (the server refused requests, e.g. on a queue timeout) is recorded with
    its reason instead of a measurement, and the run goes on.
    """
    before = read_counters(client)
    entry: dict[str, Any] = {"concurrency": concurrency, "label": label or model, "measurement": None, "error": None}
    try:
        measurement: PerfMeasurement = measure(
            model=model,
            url=url,
            input_data=input_data,
            concurrency=concurrency,
            out_dir=out_dir,
            settings=settings,
            shared_memory=shared_memory,
            label=label,
        )
    except PerfAnalyzerError as error:
        entry["error"] = error.reason
        print(f"  {entry['label']} c={concurrency}: FAILED: {error.reason}", flush=True)
    else:
        entry["measurement"] = measurement.to_dict()
        print(
            f"  {entry['label']} c={concurrency}: {measurement.throughput:.1f} img/s, p50 {measurement.p50_ms:.1f} "
            f"ms, p99 {measurement.p99_ms:.1f} ms{'' if measurement.stable else ' (unstable)'}",
            flush=True,
        )
    entry["steps"] = [step.to_dict() for step in step_times(before, read_counters(client), models)]
    return entry


def scaling_inputs(profile: Profile, out: Path) -> dict[str, list[tuple[str, Path]]]:
    """Input-data files of the two sweeps: (label, JSON) per image size and per plate count."""
    per_point = profile.scaling_images_per_point
    plate_cycle = [MIXED_PLATE_COUNTS[index % len(MIXED_PLATE_COUNTS)] for index in range(per_point)]
    points: dict[str, list[tuple[str, list[SceneRequest]]]] = {
        "image_size": [
            (f"{width}x{height}", [SceneRequest(height, width, plates) for plates in plate_cycle])
            for height, width in SCALING_SIZES
        ],
        "plates": [
            (str(plates), [SceneRequest(*PLATE_SWEEP_SIZE, plates)] * per_point) for plates in SCALING_PLATE_COUNTS
        ],
    }
    sweeps: dict[str, list[tuple[str, Path]]] = {}
    for sweep, sweep_points in points.items():
        sweeps[sweep] = []
        for index, (label, scenes) in enumerate(sweep_points):
            folder = write_scenes(scenes, out / "images" / f"{sweep}_{label}", seed=SEED + index)
            data = write_input_data(read_images(folder_images(folder)), out / "inputs" / f"{sweep}_{label}.json")
            sweeps[sweep].append((label, data))
    return sweeps


def interleaved_rounds(
    client: grpcclient.InferenceServerClient,
    profile: Profile,
    floor: OnnxPipeline,
    images: list[BenchImage],
    common: dict[str, Any],
    ensemble_models: list[str],
    encoded_input_data: Path,
    with_bls: bool,
) -> Rounds:
    """Every design in turn, ``profile.rounds`` times, at the throughput target's concurrency."""
    concurrency = TARGET_CONCURRENCY_THROUGHPUT
    arrays = [item.image for item in images]
    detector = DetectorAlone(floor, arrays)
    print(f"interleaved rounds at concurrency {concurrency}", flush=True)

    def served(model: str, models: list[str], label: str, **overrides: Any) -> Callable[[], DesignRun]:
        def measure_once() -> DesignRun:
            entry = measure_served(
                client, model=model, models=models, concurrency=concurrency, label=label, **{**common, **overrides}
            )
            measured = entry["measurement"]
            if measured is None:
                return DesignRun(None, error=entry["error"])
            return DesignRun(measured["throughput"], measured["p50_ms"], measured["p99_ms"])

        return measure_once

    def in_process(call: Callable[[np.ndarray], Any], inputs: list[np.ndarray]) -> Callable[[], DesignRun]:
        return lambda: measure_in_process(
            call, inputs, concurrency, duration_s=profile.floor_duration_s, warmup_s=profile.floor_warmup_s
        )

    designs: dict[str, Callable[[], DesignRun]] = {
        ENSEMBLE: served(spec.ENSEMBLE_NAME, ensemble_models, "rounds_ensemble"),
        ENCODED: served(
            spec.ENCODED_ENSEMBLE_NAME,
            ["image_decoder", *ensemble_models],
            "rounds_encoded",
            input_data=encoded_input_data,
        ),
    }
    if with_bls:
        designs[BLS] = served(BLS_MODEL_NAME, baseline_models(), "rounds_bls")
    designs[FLOOR] = in_process(floor, arrays)
    designs[DETECTOR] = in_process(detector, detector.views)
    return run_rounds(designs, concurrency, profile.rounds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results written to ``<out>/results.json``."""
    profile = QUICK if args.quick else FULL
    started = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    reason = why_perf_analyzer_cannot_run()
    if reason is not None:
        raise SystemExit(f"benchmarks.run: perf_analyzer cannot run: {reason}")
    notes: list[str] = list(args.note)
    if profile.name == "quick":
        notes.append("Quick run: two concurrencies, short windows, no scaling sweeps. Use it as a smoke check.")

    print("writing the input images", flush=True)
    mixed_folder = write_scenes(mixed_scenes(profile.scenes_per_size), out / "images" / "mixed", seed=SEED)
    real = real_photos()
    images = read_images(folder_images(mixed_folder)) + read_images(real)
    input_data = write_input_data(images, out / "inputs" / "mixed.json")
    files = encoded_files(images, real)
    encoded_input_data = write_encoded_input_data(files, out / "inputs" / "mixed_encoded.json")
    sweeps = scaling_inputs(profile, out) if profile.scaling and not args.skip_scaling else {}

    baseline_repository = write_baseline_repository(args.repository, out / "bls_repository")
    floor = floor_pipeline(args.repository, out / "floor_graphs")
    ensemble_models = composing_models(args.repository)
    csv_dir = out / "perf"
    results: dict[str, Any] = {
        "profile": profile.name,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "-m", "benchmarks.run", *args.argv]),
        "machine": describe_machine(),
        "commit": git_commit(),
        "graphs": graph_digests(args.repository),
        "ensemble_model": spec.ENSEMBLE_NAME,
        "bls_model": BLS_MODEL_NAME,
        "concurrencies": list(profile.concurrencies),
        "inputs": {
            "mixed": [{"name": item.name, "size": item.size_label} for item in images],
            "plates_drawn": f"{min(MIXED_PLATE_COUNTS)}-{max(MIXED_PLATE_COUNTS)}",
            "real": ", ".join(path.name for path in real),
        },
        "ensemble": [],
        "bls": [],
        "floor": [],
        "notes": notes,
        "request_bytes": {
            "raw": float(np.mean([item.image.nbytes for item in images])),
            "encoded": float(np.mean([len(data) for data in files])),
        },
    }

    with serving(args, baseline_repository) as (url, version):
        results["triton_version"] = version
        with grpcclient.InferenceServerClient(url) as client:
            with_bls = client.is_model_ready(BLS_MODEL_NAME)
            if not with_bls:
                notes.append(
                    f"The server at {url} does not serve {BLS_MODEL_NAME}: start it with "
                    f"--model-repository={baseline_repository} as well to measure the baseline."
                )
            print("warming up and comparing the designs' answers", flush=True)
            results["agreement"], answers = compare_answers(client, images, floor, with_bls)
            results["plates_read"] = plates_read(answers, plate_labels(mixed_folder, shared_dir() / "real"))
            designs = [("ensemble", spec.ENSEMBLE_NAME, ensemble_models)]
            if with_bls:
                designs.append(("bls", BLS_MODEL_NAME, baseline_models()))
            designs_run = [design for design, _, _ in designs]
            common = dict(url=url, input_data=input_data, out_dir=csv_dir, settings=profile.settings)
            # The designs take turns at each level, so a change in the machine's load between levels hits both.
            for concurrency in profile.concurrencies:
                print(f"measuring concurrency {concurrency}", flush=True)
                for design, model, models in designs:
                    results[design].append(
                        measure_served(client, model=model, models=models, concurrency=concurrency, **common)
                    )
            shm_concurrency = profile.shared_memory_concurrency
            grpc_entry = next((e for e in results["ensemble"] if e["concurrency"] == shm_concurrency), None)
            shm_entry = measure_served(
                client,
                model=spec.ENSEMBLE_NAME,
                models=ensemble_models,
                concurrency=shm_concurrency,
                shared_memory=True,
                **common,
            )
            results["shared_memory"] = {
                "grpc": grpc_entry["measurement"] if grpc_entry else None,
                "shm": shm_entry["measurement"],
                "shm_error": shm_entry["error"],
                "steps": shm_entry["steps"],
            }
            results["rounds"] = interleaved_rounds(
                client, profile, floor, images, common, ensemble_models, encoded_input_data, with_bls
            ).to_dict()
            if sweeps:
                results["scaling"] = {"concurrency": profile.scaling_concurrency}
                for sweep, points in sweeps.items():
                    print(f"scaling with {sweep}", flush=True)
                    results["scaling"][sweep] = [
                        {
                            **measure_served(
                                client,
                                model=spec.ENSEMBLE_NAME,
                                models=ensemble_models,
                                url=url,
                                input_data=data,
                                concurrency=profile.scaling_concurrency,
                                out_dir=csv_dir,
                                settings=profile.settings,
                                label=f"scaling_{sweep}_{label}",
                            ),
                            "label": label,
                        }
                        for label, data in points
                    ]

    print("measuring the in-process floor", flush=True)
    arrays = [item.image for item in images]
    for concurrency in profile.concurrencies:
        measurement = measure_floor(
            floor, arrays, concurrency, duration_s=profile.floor_duration_s, warmup_s=profile.floor_warmup_s
        )
        print(
            f"  floor c={concurrency}: {measurement.throughput:.1f} img/s, p50 {measurement.p50_ms:.1f} ms, "
            f"p99 {measurement.p99_ms:.1f} ms",
            flush=True,
        )
        results["floor"].append(measurement.to_dict())

    settings = profile.settings
    # One example command line per design: the first level each completed (the others differ in concurrency only).
    examples = [next((e["measurement"] for e in results[design] if e["measurement"]), None) for design in designs_run]
    examples.append(results["shared_memory"]["shm"])
    results["perf_commands"] = [
        shlex.join(example["command"]).replace(str(repo_root()) + "/", "") for example in examples if example
    ]
    results["method"] = [
        f"perf_analyzer, one process per concurrency level: windows of {settings.measurement_interval_ms} ms until "
        f"three agree within {settings.stability_percentage:g} % (at most {settings.max_trials}); a level that never "
        "does is measured once over a fixed request count (three windows' worth) and flagged.",
        f"Floor: {profile.floor_warmup_s:g} s warm-up, then a window of at least {profile.floor_duration_s:g} s and "
        "3 answers per concurrent client; throughput and latencies of the answers arriving inside it.",
        "Server-side time per step: Triton statistics read before and after each perf_analyzer process.",
    ]
    print("measuring the machine's SGEMM peak", flush=True)
    results["sgemm_gflops"] = sgemm_peak_gflops()
    results["duration_s"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="concurrencies 1 and 8, short windows, no sweeps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"), help="inputs, CSVs, logs, results.json")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="the served repository")
    parser.add_argument("--url", help="gRPC address of a running server (else one is started here)")
    parser.add_argument("--skip-scaling", action="store_true", help="leave out the image-size and plate sweeps")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"), help="report to write")
    parser.add_argument("--plots-dir", type=Path, default=Path("benchmarks"), help="where the PNG plots go")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (e.g. which weights)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    # A plain `kill` then unwinds like Ctrl-C, so the server started here is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    for step in STEPS:
        if not (args.repository / step / "config.pbtxt").is_file():
            print(f"benchmarks.run: {args.repository} is not a built repository: run `make engines`", file=sys.stderr)
            return 1
    results = run(args)
    report = write_report(results, args.results, args.plots_dir)
    print(f"wrote {report} ({results['duration_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
