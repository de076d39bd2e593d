"""Triton Model Analyzer over the served repository: which instance counts and batching settings to serve with.

    python -m benchmarks.analyze [--repository model_repository] [--out benchmarks/analysis] [--work build/analysis]
                                 [--mode auto|ensemble|steps] [--quick]

Model Analyzer starts the real tritonserver itself (local launch mode) with the backend directory and environment
that ``alpr.serving.server`` prepares, and drives it with the perf_analyzer of the tritonclient wheel, on the CPU.

``ensemble`` mode profiles ``plate_recognition`` with the quick search over its composing models (all marked CPU
only), fed with the benchmark images. Model Analyzer documents ensemble search for up to four composing models and
ours has six, so ``auto`` (the default) tries the ensemble first and, if that fails, profiles the three batching
steps (detector, stn, lprnet) on their own (``steps`` mode), each with the quick search over instance count,
dynamic batching and max batch size, and says so in the summary.

Model Analyzer's quick search starts every batching model at ``max_batch_size: 1`` and rejects as illegal a config
whose ``preferred_batch_size`` exceeds it, which would end the search at its first step; it therefore profiles a
copy of the repository whose only difference is that the preferred batch sizes are cleared (it sets dynamic batching
itself).

Writes into ``--out``: ``SUMMARY.md`` (what Model Analyzer recommends), ``best/<variant>/config.pbtxt`` (the best
configuration found per profiled model), ``reports/`` (its summary and detailed reports, HTML), ``plots/`` (PNG) and
``results/`` (its CSV tables). Its checkpoints, variant repositories and logs stay in ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from alpr import spec
from alpr.serving.repository import read_config
from alpr.serving.server import (
    SHM_DEFAULT_BYTES,
    find_installation,
    free_ports,
    prepare_backend_directory,
    server_environment,
)
from benchmarks.inputs import folder_images, mixed_scenes, read_images, write_input_data, write_scenes
from benchmarks.perf_analyzer import find_perf_analyzer, perf_analyzer_environment, why_perf_analyzer_cannot_run

BATCHING_STEPS = ("detector", "stn", "lprnet")
SEED = 7
# Per profiled model; Model Analyzer stops a perf_analyzer run after this long.
PERF_ANALYZER_TIMEOUT_S = 300
PROCESS_TIMEOUT_S = 4 * 3600
# Times Model Analyzer may lengthen the windows of a measurement that does not stabilise.
MAX_AUTO_ADJUSTS = 3
# How long Model Analyzer gets to stop its server and save its checkpoint when interrupted.
STOP_TIMEOUT_S = 60


@dataclass(frozen=True)
class SearchLimits:
    """Bounds of the quick search, sized for a small CPU machine."""

    max_instance_count: int
    max_concurrency: int
    max_binary_search_steps: int
    # perf_analyzer time windows and how much they may differ; Model Analyzer lengthens unstable windows.
    measurement_interval_ms: int
    stability_percentage: float
    # Re-measure the best configurations over a range of concurrencies for the reports' curves.
    concurrency_sweep: bool


FULL_LIMITS = SearchLimits(
    max_instance_count=3,
    max_concurrency=16,
    max_binary_search_steps=3,
    measurement_interval_ms=3000,
    stability_percentage=20,
    concurrency_sweep=True,
)
QUICK_LIMITS = SearchLimits(
    max_instance_count=2,
    max_concurrency=8,
    max_binary_search_steps=2,
    measurement_interval_ms=2000,
    stability_percentage=30,
    concurrency_sweep=False,
)


def model_analyzer_executable() -> Path:
    """The ``model-analyzer`` script of this environment (pip install triton-model-analyzer)."""
    script = Path(sysconfig.get_path("scripts")) / "model-analyzer"
    found = script if script.is_file() else shutil.which("model-analyzer")
    if not found:
        raise SystemExit("benchmarks.analyze: model-analyzer not found: pip install triton-model-analyzer")
    return Path(found)


def _yaml_value(value: object, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                lines += [f"{pad}{key}:", *_yaml_value(item, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
        return lines
    if isinstance(value, list):
        return [f"{pad}- {json.dumps(item)}" for item in value]
    return [f"{pad}{json.dumps(value)}"]


def to_yaml(config: dict[str, object]) -> str:
    """YAML text of nested dicts, lists and scalars (scalars JSON-quoted, which YAML reads as the same values)."""
    return "\n".join(_yaml_value(config, 0)) + "\n"


def analyzer_config(
    *,
    repository: Path,
    work: Path,
    profile_models: dict[str, dict[str, object]],
    composing_models: list[str],
    limits: SearchLimits,
) -> dict[str, object]:
    """The Model Analyzer ``profile`` configuration (local launch mode, CPU only, quick search)."""
    installation = find_installation()
    backend_directory = prepare_backend_directory(installation, work / "triton")
    environment = server_environment(installation)
    server_environment_subset = {key: environment[key] for key in ("PATH", "LD_LIBRARY_PATH") if key in environment}
    http_port, grpc_port, metrics_port = free_ports(3)
    config: dict[str, object] = {
        "model_repository": str(repository.resolve()),
        "output_model_repository_path": str((work / "variants").resolve()),
        "override_output_model_repository": True,
        "checkpoint_directory": str((work / "checkpoints").resolve()),
        "export_path": str((work / "export").resolve()),
        "triton_launch_mode": "local",
        "triton_server_path": str(installation.executable),
        "triton_output_path": str((work / "tritonserver.log").resolve()),
        "triton_server_flags": {
            "backend-directory": str(backend_directory),
            # As alpr.serving.server starts it; Model Analyzer takes one --backend-config, so the growth step stays
            # default.
            "backend-config": f"python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
        },
        "triton_server_environment": server_environment_subset,
        "triton_http_endpoint": f"localhost:{http_port}",
        "triton_grpc_endpoint": f"localhost:{grpc_port}",
        "triton_metrics_url": f"http://localhost:{metrics_port}/metrics",
        "client_protocol": "grpc",
        "perf_analyzer_path": str(perf_analyzer_wrapper(work)),
        "perf_analyzer_timeout": PERF_ANALYZER_TIMEOUT_S,
        # perf_analyzer shares two cores with the server: do not abort it for using them.
        "perf_analyzer_cpu_util": 400.0,
        "perf_analyzer_flags": {
            "measurement-mode": "time_windows",
            "measurement-interval": limits.measurement_interval_ms,
            "stability-percentage": limits.stability_percentage,
        },
        "perf_analyzer_max_auto_adjusts": MAX_AUTO_ADJUSTS,
        "run_config_search_mode": "quick",
        "run_config_search_max_instance_count": limits.max_instance_count,
        "run_config_search_max_concurrency": limits.max_concurrency,
        "run_config_search_max_binary_search_steps": limits.max_binary_search_steps,
        "run_config_search_max_model_batch_size": spec.RECOGNISER_MAX_BATCH,
        "collect_cpu_metrics": True,
        "concurrency_sweep_disable": not limits.concurrency_sweep,
        "profile_models": profile_models,
    }
    if composing_models:
        config["cpu_only_composing_models"] = composing_models
    return config


def perf_analyzer_wrapper(work: Path) -> Path:
    """A script that runs perf_analyzer with the CUDA runtime wheel's library on ``LD_LIBRARY_PATH``.

    Model Analyzer runs perf_analyzer with the server's environment, and the server must not see that library (it
    would try to use CUDA), so perf_analyzer gets it from this wrapper instead.
    """
    library_path = perf_analyzer_environment().get("LD_LIBRARY_PATH", "")
    wrapper = work / "perf_analyzer"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export LD_LIBRARY_PATH={shlex.quote(library_path)}\n"
        f'exec {shlex.quote(str(find_perf_analyzer()))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper.resolve()


def analysis_repository(product: Path, out_dir: Path) -> Path:
    """Copy ``product`` into ``out_dir`` with every ``preferred_batch_size`` cleared; returns ``out_dir``."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(product, out_dir, ignore=shutil.ignore_patterns("__pycache__"))
    for config_path in out_dir.glob("*/config.pbtxt"):
        config = read_config(config_path)
        if config.HasField("dynamic_batching"):
            del config.dynamic_batching.preferred_batch_size[:]
            config_path.write_text(text_format.MessageToString(config))
    return out_dir


def ensemble_models(repository: Path) -> list[str]:
    """The ensemble's composing models, as its config lists them."""
    config = read_config(repository / spec.ENSEMBLE_NAME / "config.pbtxt")
    return [step.model_name for step in config.ensemble_scheduling.step]


def run_model_analyzer(config: dict[str, object], work: Path, label: str) -> tuple[bool, Path]:
    """``model-analyzer profile`` with ``config``; returns whether it succeeded and its log."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / f"{label}.yaml"
    config_path.write_text(to_yaml(config))
    log_path = work / f"{label}.log"
    command = [str(model_analyzer_executable()), "profile", "-f", str(config_path)]
    print(f"$ {' '.join(command)}  (log {log_path})", flush=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:
            status = process.wait(timeout=PROCESS_TIMEOUT_S)
        except BaseException:
            # Timeout or interruption: SIGINT lets Model Analyzer stop the server it started and save a checkpoint.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
    return status == 0, log_path


def measured_rows(export: Path) -> list[dict[str, str]]:
    """Rows of Model Analyzer's inference table (``metrics-model-inference.csv``), in its ranking order."""
    table = export / "results" / "metrics-model-inference.csv"
    if not table.is_file():
        return []
    with table.open(newline="") as rows:
        return list(csv.DictReader(rows))


def config_names(row: dict[str, str]) -> list[str]:
    """The variant names of a row: ``name`` or ``ensemble_variant: step_variant, ...``."""
    return [name.strip() for name in row.get("Model Config Path", "").replace(":", ",").split(",") if name.strip()]


def searched_beyond_default(rows: list[dict[str, str]]) -> bool:
    """Whether any configuration other than the served one (``<model>_config_default``) was measured."""
    return any(not config_names(row)[0].endswith("_config_default") for row in rows if config_names(row))


def first_perf_error(export: Path) -> str | None:
    """The first error perf_analyzer reported to Model Analyzer, if any."""
    log = export / "perf_analyzer_error.log"
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if "error" in line.lower() and not line.lower().startswith("error:"):
            return line.strip()
    return None


@dataclass
class Findings:
    """What Model Analyzer left behind, copied into the output folder."""

    rows: list[dict[str, str]]
    # Best configuration per profiled model: the variant names of its top-ranked row.
    best: dict[str, list[str]]
    reports: list[str]


def collect(work: Path, out: Path, profiled: list[str]) -> Findings:
    """Copy Model Analyzer's reports, tables and the best configs into ``out``."""
    export = work / "export"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for folder in ("reports", "plots", "results"):
        if (export / folder).is_dir():
            shutil.copytree(export / folder, out / folder)
    reports = sorted(
        path.relative_to(out).as_posix()
        for folder in ("reports", "plots")
        for path in (out / folder).rglob("*")
        if path.suffix in {".html", ".png", ".pdf"}
    )
    rows = measured_rows(export)
    best: dict[str, list[str]] = {}
    for row in rows:
        if row.get("Model") in profiled and row["Model"] not in best and config_names(row):
            best[row["Model"]] = config_names(row)
    for variants in best.values():
        for variant in variants:
            source = work / "variants" / variant / "config.pbtxt"
            if source.is_file():
                target = out / "best" / variant / "config.pbtxt"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    return Findings(rows=rows, best=best, reports=reports)


SUMMARY_COLUMNS = (
    "Model",
    "Model Config Path",
    "Instance Group",
    "Max Batch Size",
    "Concurrency",
    "Throughput (infer/sec)",
    "p99 Latency (ms)",
)


def summary_markdown(
    *, mode: str, ensemble_failure: str | None, findings: Findings, limits: SearchLimits, minutes: float
) -> str:
    """``SUMMARY.md``: what ran, the best configuration per model and where the reports are."""
    lines = ["# Model Analyzer summary", "", "Generated by `python -m benchmarks.analyze`; do not edit by hand.", ""]
    if mode == "ensemble":
        lines.append(
            f"Profiled the ensemble `{spec.ENSEMBLE_NAME}` with the quick search over its composing models (CPU only)."
        )
    else:
        steps = ", ".join(f"`{name}`" for name in BATCHING_STEPS)
        lines.append(f"Profiled the batching steps {steps} on their own, each with random inputs of its own shape.")
        if ensemble_failure is not None:
            lines += ["", f"The ensemble search was tried first and failed: {ensemble_failure}"]
    lines += [
        "",
        f"Search: quick, instance count up to {limits.max_instance_count}, concurrency up to "
        f"{limits.max_concurrency}, max batch size up to {spec.RECOGNISER_MAX_BATCH}; took {minutes:.0f} min. "
        "`*_config_default` is the served configuration (without preferred batch sizes); Model Analyzer ranks by "
        "throughput.",
        "",
    ]
    if findings.best:
        lines += ["## Recommended", ""]
        for model, variants in findings.best.items():
            configs = ", ".join(f"`best/{variant}/config.pbtxt`" for variant in variants)
            lines.append(f"- `{model}`: `{variants[0]}` ({configs})")
        lines.append("")
    else:
        lines += ["Model Analyzer produced no ranked configuration; see its log in the work folder.", ""]
    if findings.rows:
        columns = [column for column in SUMMARY_COLUMNS if column in findings.rows[0]]
        lines += ["## Measured configurations (as Model Analyzer ranks them)", ""]
        lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        for row in findings.rows:
            lines.append("| " + " | ".join(row.get(column, "").replace("|", "/") for column in columns) + " |")
        lines.append("")
    if findings.reports:
        lines += ["## Reports", "", *(f"- `{path}`" for path in findings.reports), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="the served repository")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/analysis"), help="summary, reports, configs")
    parser.add_argument("--work", type=Path, default=Path("build/analysis"), help="checkpoints, variants, logs")
    parser.add_argument("--mode", choices=("auto", "ensemble", "steps"), default="auto")
    parser.add_argument("--quick", action="store_true", help="smaller search: for a smoke check")
    args = parser.parse_args(argv)
    # A plain `kill` then unwinds like Ctrl-C, so Model Analyzer and its server are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    reason = why_perf_analyzer_cannot_run()
    if reason is not None:
        print(f"benchmarks.analyze: perf_analyzer cannot run: {reason}", file=sys.stderr)
        return 1
    if not (args.repository / spec.ENSEMBLE_NAME / "config.pbtxt").is_file():
        print(f"benchmarks.analyze: {args.repository} is not a built repository: run `make engines`", file=sys.stderr)
        return 1
    limits = QUICK_LIMITS if args.quick else FULL_LIMITS
    # Absolute: Model Analyzer runs inside the work folder and reads every path from its YAML.
    work: Path = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.monotonic()
    repository = analysis_repository(args.repository, work / "repository")

    mode, ensemble_failure = args.mode, None
    if mode in ("auto", "ensemble"):
        scenes = write_scenes(mixed_scenes(1), work / "images", seed=SEED)
        input_data = write_input_data(read_images(folder_images(scenes)), work / "input.json")
        config = analyzer_config(
            repository=repository,
            work=work,
            profile_models={
                spec.ENSEMBLE_NAME: {"cpu_only": True, "perf_analyzer_flags": {"input-data": str(input_data.resolve())}}
            },
            composing_models=ensemble_models(repository),
            limits=limits,
        )
        succeeded, log = run_model_analyzer(config, work, "ensemble")
        export = work / "export"
        if succeeded and searched_beyond_default(measured_rows(export)):
            mode = "ensemble"
        else:
            error = first_perf_error(export)
            ensemble_failure = "no configuration other than the served one could be measured"
            if error:
                ensemble_failure += f" (perf_analyzer: `{error}`)"
            ensemble_failure += "."
            if error and "batch-size must be <=" in error:
                ensemble_failure += (
                    " The quick search starts the composing models at max_batch_size 1, but the crops of one image "
                    f"reach stn and lprnet as one batch of up to K = {spec.MAX_PLATES}."
                )
            if not succeeded:
                ensemble_failure += f" Model Analyzer then exited with an error (`{log.name}` in the work folder)."
            print(f"ensemble search failed: {ensemble_failure}", flush=True)
            if args.mode == "ensemble":
                return 1
            mode = "steps"
            for folder in ("export", "checkpoints"):
                shutil.rmtree(work / folder, ignore_errors=True)
    if mode == "steps":
        config = analyzer_config(
            repository=repository,
            work=work,
            profile_models={name: {"cpu_only": True} for name in BATCHING_STEPS},
            composing_models=[],
            limits=limits,
        )
        succeeded, log = run_model_analyzer(config, work, "steps")
        if not succeeded:
            print(f"benchmarks.analyze: Model Analyzer failed on the steps; see {log}", file=sys.stderr)
            return 1

    profiled = [spec.ENSEMBLE_NAME] if mode == "ensemble" else list(BATCHING_STEPS)
    findings = collect(work, args.out, profiled)
    summary = summary_markdown(
        mode=mode,
        ensemble_failure=ensemble_failure,
        findings=findings,
        limits=limits,
        minutes=(time.monotonic() - started) / 60,
    )
    (args.out / "SUMMARY.md").write_text(summary)
    print(f"wrote {args.out / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
