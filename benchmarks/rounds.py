"""Interleaved rounds: every design measured in turn, several times, so that a change in the machine's load hits all.

A ratio measured design after design moves with whatever else the machine does meanwhile (another process taking a
core for a minute turns 0.9x into 0.35x). Here each round measures every design once, back to back, at the same
concurrency: the served ensemble (raw pixels and image files), the BLS baseline, the in-process floor and the
detector alone in process on the same views (the compute limit). Each round gives its own ratios; the report takes
their median and says how far the rounds spread ((max - min) / median), with the load average seen around each round.
The machine's single-precision matrix-multiply peak (NumPy SGEMM) is measured once, as the other yardstick.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from alpr import spec
from alpr.pipeline import OnnxPipeline
from benchmarks.floor import measure_floor

# The designs of a round, in the order they are measured.
ENSEMBLE, ENCODED, BLS, FLOOR, DETECTOR = "ensemble", "encoded", "bls", "floor", "detector alone"
# Ratios reported for each round: (name, numerator, denominator).
RATIOS = (
    ("ensemble / floor", ENSEMBLE, FLOOR),
    ("ensemble / BLS", ENSEMBLE, BLS),
    ("ensemble / detector alone", ENSEMBLE, DETECTOR),
    ("image files / raw pixels", ENCODED, ENSEMBLE),
)
SGEMM_SIZE = 2048


@dataclass(frozen=True)
class DesignRun:
    """One design measured in one round: images per second and latency quantiles (ms), or why it failed."""

    throughput: float | None
    p50_ms: float | None = None
    p99_ms: float | None = None
    error: str | None = None


@dataclass
class Round:
    """Every design once, back to back, and the 1-minute load average before and after."""

    runs: dict[str, DesignRun] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0


@dataclass(frozen=True)
class RatioSummary:
    """One ratio over the rounds: each round's value, their median and spread."""

    name: str
    values: tuple[float, ...]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def spread(self) -> float | None:
        """(max - min) / median over the rounds: 0.1 means the rounds disagree by 10 % of the median."""
        if len(self.values) < 2 or not self.median:
            return None
        return (max(self.values) - min(self.values)) / self.median


@dataclass
class Rounds:
    """Interleaved rounds at one concurrency."""

    concurrency: int
    designs: list[str]
    rounds: list[Round] = field(default_factory=list)

    def ratio(self, name: str, numerator: str, denominator: str) -> RatioSummary:
        values = []
        for one in self.rounds:
            top, bottom = one.runs.get(numerator), one.runs.get(denominator)
            if top and bottom and top.throughput and bottom.throughput:
                values.append(top.throughput / bottom.throughput)
        return RatioSummary(name, tuple(values))

    def median_throughput(self, design: str) -> float | None:
        """The median images/s of ``design`` over the rounds that measured it."""
        values = [one.runs[design].throughput for one in self.rounds if design in one.runs]
        measured = [value for value in values if value is not None]
        return float(np.median(measured)) if measured else None

    def ratios(self) -> list[RatioSummary]:
        return [self.ratio(*ratio) for ratio in RATIOS if ratio[1] in self.designs and ratio[2] in self.designs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "designs": self.designs,
            "rounds": [asdict(one) for one in self.rounds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rounds:
        rounds = [
            Round(
                runs={name: DesignRun(**run) for name, run in one["runs"].items()},
                load_before=one["load_before"],
                load_after=one["load_after"],
            )
            for one in data["rounds"]
        ]
        return cls(data["concurrency"], list(data["designs"]), rounds)


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def run_rounds(designs: dict[str, Callable[[], DesignRun]], concurrency: int, count: int) -> Rounds:
    """Measure every design of ``designs`` once per round, ``count`` rounds, printing each result."""
    result = Rounds(concurrency, list(designs))
    for index in range(count):
        one = Round(load_before=load_average())
        for name, measure in designs.items():
            one.runs[name] = measure()
            run = one.runs[name]
            shown = f"{run.throughput:.2f} img/s" if run.throughput is not None else f"FAILED: {run.error}"
            print(f"  round {index + 1}/{count} c={concurrency} {name}: {shown}", flush=True)
        one.load_after = load_average()
        result.rounds.append(one)
    return result


class DetectorAlone:
    """The detector graph alone, in process, on the letterboxed views of each image (precomputed)."""

    def __init__(self, pipeline: OnnxPipeline, images: Sequence[np.ndarray]) -> None:
        self.session = pipeline.sessions["detector"]
        self.views = [pipeline.run("preprocess", image)[0] for image in images]

    def __call__(self, views: np.ndarray) -> list[int]:
        (num_dets, _, _) = self.session.run(None, {spec.VIEWS: views})
        return [int(count) for count in num_dets.reshape(-1)]


def measure_in_process(
    call: Callable[[np.ndarray], Sequence[Any]], inputs: Sequence[np.ndarray], concurrency: int, duration_s: float,
    warmup_s: float,
) -> DesignRun:  # fmt: skip
    """``call`` driven by ``concurrency`` threads over ``inputs`` round-robin (the floor's harness)."""
    measurement = measure_floor(call, inputs, concurrency, duration_s=duration_s, warmup_s=warmup_s)
    return DesignRun(measurement.throughput, measurement.p50_ms, measurement.p99_ms)


def sgemm_peak_gflops(size: int = SGEMM_SIZE, repeats: int = 5) -> float:
    """The best of ``repeats`` float32 ``size`` x ``size`` matrix products, in GFLOP/s (all cores, NumPy's BLAS)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    a @ b  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9
