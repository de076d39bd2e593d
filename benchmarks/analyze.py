"""Triton Model Analyzer over the served repository: which instance counts and batching settings to serve with.

    python -m benchmarks.analyze [--repository model_repository] [--out benchmarks/analysis] [--work build/analysis]
                                 [--mode auto|ensemble|steps] [--quick]

Model Analyzer starts the real tritonserver itself (local launch mode) with the backend directory and environment
that ``alpr.server`` prepares, and drives it with the perf_analyzer of the tritonclient wheel, on the CPU.

``ensemble`` mode profiles ``plate_recognition`` with the quick search over its composing models (all marked CPU
only), fed with the benchmark images. Model Analyzer documents ensemble search for up to four composing models and
ours has six, so ``auto`` (the default) tries the ensemble first and, if that fails, profiles the three batching
steps (detector, stn, lprnet) on their own (``steps`` mode), each with the quick search over instance count,
dynamic batching and max batch size, and says so in the summary.

Model Analyzer's quick search starts every batching model at ``max_batch_size: 1`` and rejects as illegal a config
whose ``preferred_batch_size`` exceeds it, which would end the search at its first step; it therefore profiles a
copy of the repository whose only difference is that the preferred batch sizes are cleared (it sets dynamic batching
itself).

Writes into ``--out``: ``SUMMARY.md`` (what Model Analyzer recommends), ``best/<model>/config.pbtxt`` (the best
configuration found per profiled model), ``reports/`` (its summary reports, HTML and PNG) and ``results/`` (its
CSV tables). Its checkpoints, variant repositories and logs stay in ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from alpr import spec
from alpr.server import find_installation, free_port, prepare_backend_directory, server_environment
from benchmarks.baseline import read_config
from benchmarks.inputs import folder_images, mixed_scenes, read_images, write_input_data, write_scenes
from benchmarks.perf_analyzer import find_perf_analyzer, perf_analyzer_environment, why_perf_analyzer_cannot_run

BATCHING_STEPS = ("detector", "stn", "lprnet")
SEED = 7
# Per profiled model; Model Analyzer stops a perf_analyzer run after this long.
PERF_ANALYZER_TIMEOUT_S = 300
PROCESS_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class SearchLimits:
    """Bounds of the quick search, sized for a small CPU machine."""

    max_instance_count: int
    max_concurrency: int
    max_binary_search_steps: int
    measurement_request_count: int


FULL_LIMITS = SearchLimits(
    max_instance_count=4, max_concurrency=32, max_binary_search_steps=4, measurement_request_count=50
)
QUICK_LIMITS = SearchLimits(
    max_instance_count=2, max_concurrency=8, max_binary_search_steps=2, measurement_request_count=20
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
    # Model Analyzer runs perf_analyzer with this environment too: it needs the CUDA runtime wheel's library.
    libraries = [environment.get("LD_LIBRARY_PATH"), perf_analyzer_environment().get("LD_LIBRARY_PATH")]
    server_environment_subset = {
        "PATH": environment["PATH"],
        "LD_LIBRARY_PATH": os.pathsep.join(dict.fromkeys(part for part in libraries if part)),
    }
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
            # Room for a full-HD frame in each Python-backend instance's shared memory from the start.
            "backend-config": "python,shm-default-byte-size=16777216",
        },
        "triton_server_environment": server_environment_subset,
        "triton_http_endpoint": f"localhost:{free_port()}",
        "triton_grpc_endpoint": f"localhost:{free_port()}",
        "triton_metrics_url": f"http://localhost:{free_port()}/metrics",
        "client_protocol": "grpc",
        "perf_analyzer_path": str(find_perf_analyzer()),
        "perf_analyzer_timeout": PERF_ANALYZER_TIMEOUT_S,
        # perf_analyzer shares two cores with the server: do not abort it for using them.
        "perf_analyzer_cpu_util": 400.0,
        "perf_analyzer_flags": {"measurement-request-count": limits.measurement_request_count},
        "run_config_search_mode": "quick",
        "run_config_search_max_instance_count": limits.max_instance_count,
        "run_config_search_max_concurrency": limits.max_concurrency,
        "run_config_search_max_binary_search_steps": limits.max_binary_search_steps,
        "run_config_search_max_model_batch_size": spec.RECOGNISER_MAX_BATCH,
        "collect_cpu_metrics": True,
        "profile_models": profile_models,
    }
    if composing_models:
        config["cpu_only_composing_models"] = composing_models
    return config


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
        try:
            result = subprocess.run(
                command,
                env=perf_analyzer_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=PROCESS_TIMEOUT_S,
                cwd=work,
            )
        except subprocess.TimeoutExpired:
            return False, log_path
    return result.returncode == 0, log_path


def _best_rows(export: Path) -> list[dict[str, str]]:
    """Rows of Model Analyzer's inference table (``metrics-model-inference.csv``), best first per model."""
    table = export / "results" / "metrics-model-inference.csv"
    if not table.is_file():
        return []
    with table.open(newline="") as rows:
        return list(csv.DictReader(rows))


def collect(work: Path, out: Path, profiled: list[str]) -> dict[str, object]:
    """Copy Model Analyzer's reports, tables and best configs into ``out``; returns what was found."""
    export = work / "export"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    found: dict[str, object] = {"reports": [], "best": {}, "rows": _best_rows(export)}
    for folder in ("reports", "results"):
        if (export / folder).is_dir():
            shutil.copytree(export / folder, out / folder)
    found["reports"] = (
        sorted(
            str(path.relative_to(out))
            for path in (out / "reports").rglob("*")
            if path.suffix in {".html", ".png", ".pdf"}
        )
        if (out / "reports").is_dir()
        else []
    )
    best: dict[str, str] = {}
    for row in found["rows"]:  # type: ignore[union-attr]
        variant = row.get("Model Config Path") or ""
        model = row.get("Model") or ""
        if model in profiled and model not in best and variant:
            best[model] = variant
    for model, variant in best.items():
        for config in sorted((work / "variants").glob(f"{variant.split(',')[0].strip()}/config.pbtxt")):
            target = out / "best" / model / "config.pbtxt"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config, target)
    found["best"] = best
    return found


def summary_markdown(
    *, mode: str, ensemble_failed_log: Path | None, found: dict[str, object], limits: SearchLimits, minutes: float
) -> str:
    """``SUMMARY.md``: what ran, the best configuration per model and where the reports are."""
    lines = ["# Model Analyzer summary", "", "Generated by `python -m benchmarks.analyze`; do not edit by hand.", ""]
    if mode == "ensemble":
        lines.append(
            f"Profiled the ensemble `{spec.ENSEMBLE_NAME}` with the quick search over its composing models (CPU only)."
        )
    else:
        lines.append(
            "Profiled the batching steps on their own (" + ", ".join(f"`{name}`" for name in BATCHING_STEPS) + ")."
        )
        if ensemble_failed_log is not None:
            lines.append(
                f"Profiling the ensemble failed first (Model Analyzer documents ensemble search for up to four "
                f"composing models; ours has six); its log was `{ensemble_failed_log.name}` in the work folder."
            )
    lines += [
        "",
        f"Search: quick, instance count up to {limits.max_instance_count}, concurrency up to "
        f"{limits.max_concurrency}, max batch size up to {spec.RECOGNISER_MAX_BATCH}; took {minutes:.0f} min.",
        "",
    ]
    rows = found["rows"]
    if rows:
        columns = [
            "Model",
            "Model Config Path",
            "Batch",
            "Concurrency",
            "Throughput (infer/sec)",
            "p99 Latency (ms)",
        ]
        columns = [column for column in columns if column in rows[0]]  # type: ignore[index]
        lines += ["## Measured configurations (best first, as Model Analyzer ranks them)", ""]
        lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        for row in rows:  # type: ignore[union-attr]
            lines.append("| " + " | ".join(row.get(column, "") for column in columns) + " |")
        lines.append("")
    best = found["best"]
    if best:
        lines += ["## Recommended", ""]
        for model, variant in best.items():  # type: ignore[union-attr]
            lines.append(f"- `{model}`: `{variant}`, config in `best/{model}/config.pbtxt`")
        lines.append("")
    else:
        lines += ["Model Analyzer produced no ranked configuration; see its log in the work folder.", ""]
    reports = found["reports"]
    if reports:
        lines += ["## Reports", "", *(f"- `{path}`" for path in reports), ""]  # type: ignore[union-attr]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="the served repository")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/analysis"), help="summary, reports, configs")
    parser.add_argument("--work", type=Path, default=Path("build/analysis"), help="checkpoints, variants, logs")
    parser.add_argument("--mode", choices=("auto", "ensemble", "steps"), default="auto")
    parser.add_argument("--quick", action="store_true", help="smaller search: for a smoke check")
    args = parser.parse_args(argv)
    reason = why_perf_analyzer_cannot_run()
    if reason is not None:
        print(f"benchmarks.analyze: perf_analyzer cannot run: {reason}", file=sys.stderr)
        return 1
    if not (args.repository / spec.ENSEMBLE_NAME / "config.pbtxt").is_file():
        print(f"benchmarks.analyze: {args.repository} is not a built repository: run `make engines`", file=sys.stderr)
        return 1
    limits = QUICK_LIMITS if args.quick else FULL_LIMITS
    work: Path = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.monotonic()
    repository = analysis_repository(args.repository, work / "repository")

    mode, ensemble_failed_log = args.mode, None
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
        if succeeded and _best_rows(work / "export"):
            mode = "ensemble"
        elif args.mode == "ensemble":
            print(f"benchmarks.analyze: Model Analyzer failed on the ensemble; see {log}", file=sys.stderr)
            return 1
        else:
            print(f"Model Analyzer failed on the ensemble ({log}); profiling the batching steps on their own")
            mode, ensemble_failed_log = "steps", log
            shutil.rmtree(work / "export", ignore_errors=True)
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
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
    found = collect(work, args.out, profiled)
    summary = summary_markdown(
        mode=mode,
        ensemble_failed_log=ensemble_failed_log,
        found=found,
        limits=limits,
        minutes=(time.monotonic() - started) / 60,
    )
    (args.out / "SUMMARY.md").write_text(summary)
    print(f"wrote {args.out / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
