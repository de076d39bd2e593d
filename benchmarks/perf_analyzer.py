"""Driving Triton's ``perf_analyzer``: where it lives, its command line, and its CSV report.

The ``tritonclient`` wheel ships ``perf_analyzer`` into the environment's scripts folder. The binary needs
``libb64.so.0d`` (Debian package ``libb64-0d``, which ``make`` installs, or unpacks into the virtual environment)
and ``libcudart.so.12`` even on a CPU-only host; the latter comes from the PyPI package ``nvidia-cuda-runtime-cu12``.
Both library folders are put on ``LD_LIBRARY_PATH`` here.

One ``perf_analyzer`` process measures one concurrency: a level that does not stabilise then costs only itself, and
the server statistics can be read around each level. When the windows never agree within the stability threshold,
the level is measured once more over a fixed number of requests (about three windows' worth at the throughput the
failed windows saw) and marked unstable.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import shutil
import statistics
import subprocess
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alpr.system_packages import local_library_dirs

PERF_ANALYZER_ENV = "PERF_ANALYZER"
UNSTABLE_MARKER = "Failed to obtain stable measurement"
# What perf_analyzer -v prints for each measurement window.
PASS_THROUGHPUT = re.compile(r"Pass \[\d+\] throughput: ([0-9.]+) infer/sec")
# Length of the fixed-size measurement of a level that never stabilised, in windows, and its floor per client.
FALLBACK_WINDOWS = 3
FALLBACK_MIN_REQUESTS_PER_SLOT = 2
# Big enough for every output of one answer: at most MAX_PLATES boxes, scores and texts of a few bytes each.
OUTPUT_SHARED_MEMORY_BYTES = 1 << 16
# Upper bound on one perf_analyzer process; a level normally takes a few measurement windows.
PROCESS_TIMEOUT_S = 600.0
USEC_PER_MS = 1000.0


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot start, or failed; the message carries the end of its output."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        # One line on why a measurement failed (the server's errors when it answered some), for reports.
        self.reason = reason or message.splitlines()[0]


def failure_reason(output: str) -> str:
    """The distinct request errors perf_analyzer printed (``Thread [n] had error: ...``), else its last line."""
    errors = [line.split("had error:", 1)[1].strip() for line in output.splitlines() if "had error:" in line]
    if errors:
        return "; ".join(dict.fromkeys(errors))
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


@dataclass(frozen=True)
class MeasurementSettings:
    """How long and how steady each perf_analyzer measurement must be."""

    measurement_interval_ms: int
    stability_percentage: float
    max_trials: int


@dataclass(frozen=True)
class LoadLevel:
    """Throughput (images/s) and latency percentiles (ms, as the client sees them) at one concurrency."""

    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PerfMeasurement(LoadLevel):
    """One concurrency level as perf_analyzer reports it."""

    # The CSV's latency components (ms). For an ensemble perf_analyzer reports the top model's own queue (nothing)
    # and the composing models' summed compute, and the composing models' queueing lands in network_server_ms.
    client_send_ms: float
    network_server_ms: float
    server_queue_ms: float
    server_compute_input_ms: float
    server_compute_infer_ms: float
    server_compute_output_ms: float
    client_recv_ms: float
    # Average latency: the sum of the components (ms).
    average_ms: float
    stable: bool
    command: list[str] = field(default_factory=list)


def find_perf_analyzer() -> Path:
    """``$PERF_ANALYZER`` when set, else the binary the tritonclient wheel installs, else ``perf_analyzer`` on PATH."""
    configured = os.environ.get(PERF_ANALYZER_ENV)
    if configured:
        return Path(configured)
    beside_interpreter = Path(sysconfig.get_path("scripts")) / "perf_analyzer"
    if beside_interpreter.is_file():
        return beside_interpreter
    on_path = shutil.which("perf_analyzer")
    if on_path:
        return Path(on_path)
    raise PerfAnalyzerError(
        "perf_analyzer not found: install tritonclient (its manylinux wheel ships the binary) or set $PERF_ANALYZER"
    )


def cuda_runtime_library_dir() -> Path | None:
    """The folder of ``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12`` wheel, when installed."""
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    library_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return library_dir if library_dir.is_dir() else None


def perf_analyzer_environment() -> dict[str, str]:
    """This process's environment with the CUDA runtime wheel's libraries on ``LD_LIBRARY_PATH``."""
    environment = dict(os.environ)
    # The CUDA runtime wheel, and libb64 where `make` unpacked it into the virtual environment without root.
    library_dirs = [str(path) for path in (cuda_runtime_library_dir(), *local_library_dirs()) if path is not None]
    if environment.get("LD_LIBRARY_PATH"):
        library_dirs.append(environment["LD_LIBRARY_PATH"])
    if library_dirs:
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs)
    return environment


def why_perf_analyzer_cannot_run() -> str | None:
    """None when ``perf_analyzer --version`` runs; otherwise the reason (missing binary or shared library)."""
    try:
        binary = find_perf_analyzer()
    except PerfAnalyzerError as error:
        return str(error)
    try:
        probe = subprocess.run(
            [str(binary), "--version"], env=perf_analyzer_environment(), capture_output=True, text=True, timeout=60
        )
    except OSError as error:
        return f"{binary} cannot start: {error}"
    if probe.returncode != 0:
        message = (probe.stderr or probe.stdout).strip()
        hint = " (`make system-packages` installs libb64-0d)" if "libb64" in message else ""
        hint += " (pip install nvidia-cuda-runtime-cu12)" if "libcudart" in message else ""
        return f"{binary} --version failed with status {probe.returncode}: {message[-500:]}{hint}"
    return None


def perf_command(
    *,
    model: str,
    url: str,
    input_data: Path,
    concurrency: int,
    csv_path: Path,
    settings: MeasurementSettings,
    shared_memory: bool = False,
    request_count: int | None = None,
) -> list[str]:
    """The perf_analyzer command line measuring ``model`` over gRPC at one concurrency."""
    command = [
        str(find_perf_analyzer()),
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        url,
        "--input-data",
        str(input_data),
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        str(settings.measurement_interval_ms),
        "--stability-percentage",
        f"{settings.stability_percentage:g}",
        "--max-trials",
        str(settings.max_trials),
        "-f",
        str(csv_path),
        # Prints every window's throughput, which sizes the fallback measurement.
        "-v",
    ]
    if shared_memory:
        command += ["--shared-memory", "system", "--output-shared-memory-size", str(OUTPUT_SHARED_MEMORY_BYTES)]
    if request_count is not None:
        command += ["--request-count", str(request_count)]
    return command


def read_csv_report(csv_path: Path) -> list[dict[str, float]]:
    """Rows of a perf_analyzer ``-f`` CSV as floats (times in microseconds, throughput in inferences/s)."""
    with csv_path.open(newline="") as report:
        return [{key.strip(): float(value) for key, value in row.items() if value} for row in csv.DictReader(report)]


def measurement_from_row(row: dict[str, float], *, stable: bool, command: list[str]) -> PerfMeasurement:
    """A ``PerfMeasurement`` from one CSV row."""
    components = (
        "Client Send",
        "Network+Server Send/Recv",
        "Server Queue",
        "Server Compute Input",
        "Server Compute Infer",
        "Server Compute Output",
        "Client Recv",
    )
    return PerfMeasurement(
        concurrency=int(row["Concurrency"]),
        throughput=row["Inferences/Second"],
        p50_ms=row["p50 latency"] / USEC_PER_MS,
        p90_ms=row["p90 latency"] / USEC_PER_MS,
        p95_ms=row["p95 latency"] / USEC_PER_MS,
        p99_ms=row["p99 latency"] / USEC_PER_MS,
        client_send_ms=row["Client Send"] / USEC_PER_MS,
        network_server_ms=row["Network+Server Send/Recv"] / USEC_PER_MS,
        server_queue_ms=row["Server Queue"] / USEC_PER_MS,
        server_compute_input_ms=row["Server Compute Input"] / USEC_PER_MS,
        server_compute_infer_ms=row["Server Compute Infer"] / USEC_PER_MS,
        server_compute_output_ms=row["Server Compute Output"] / USEC_PER_MS,
        client_recv_ms=row["Client Recv"] / USEC_PER_MS,
        average_ms=sum(row[component] for component in components) / USEC_PER_MS,
        stable=stable,
        command=command,
    )


def fallback_request_count(output: str, concurrency: int, measurement_interval_ms: int) -> int:
    """Requests for a fixed-size measurement: ``FALLBACK_WINDOWS`` windows at the median throughput of ``output``."""
    throughputs = [float(value) for value in PASS_THROUGHPUT.findall(output)]
    minimum = FALLBACK_MIN_REQUESTS_PER_SLOT * concurrency
    if not throughputs:
        return minimum
    expected = statistics.median(throughputs) * FALLBACK_WINDOWS * measurement_interval_ms / 1000.0
    return max(minimum, math.ceil(expected))


def _run(command: list[str], log_path: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=perf_analyzer_environment(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S
    )
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    return result


def measure(
    *,
    model: str,
    url: str,
    input_data: Path,
    concurrency: int,
    out_dir: Path,
    settings: MeasurementSettings,
    shared_memory: bool = False,
    label: str | None = None,
) -> PerfMeasurement:
    """Measure ``model`` at one concurrency; CSV and log go to ``out_dir/<label>.csv`` and ``.log``.

    A level that does not stabilise within ``settings.max_trials`` windows is measured once over a fixed number of
    requests (``fallback_request_count``) and returned with ``stable=False``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    label = label or f"{model}_c{concurrency}{'_shm' if shared_memory else ''}"
    csv_path, log_path = out_dir / f"{label}.csv", out_dir / f"{label}.log"
    csv_path.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)
    common = dict(
        model=model,
        url=url,
        input_data=input_data,
        concurrency=concurrency,
        csv_path=csv_path,
        settings=settings,
        shared_memory=shared_memory,
    )
    command = perf_command(**common)
    result = _run(command, log_path)
    stable = True
    if result.returncode != 0 and UNSTABLE_MARKER in result.stdout + result.stderr:
        stable = False
        request_count = fallback_request_count(result.stdout, concurrency, settings.measurement_interval_ms)
        command = perf_command(**common, request_count=request_count)
        result = _run(command, log_path)
    if result.returncode != 0 or not csv_path.is_file():
        output = (result.stdout + result.stderr).strip()
        raise PerfAnalyzerError(
            f"perf_analyzer failed with status {result.returncode} (log {log_path}):\n{output[-3000:]}",
            reason=failure_reason(output),
        )
    rows = read_csv_report(csv_path)
    if len(rows) != 1:
        raise PerfAnalyzerError(f"expected one row in {csv_path}, found {len(rows)}")
    return measurement_from_row(rows[0], stable=stable, command=command)
