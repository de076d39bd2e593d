"""Soak test: concurrent requests for a long time, every answer checked, the server's memory sampled.

    python -m benchmarks.soak [--duration 1800] [--concurrency 16] [--url HOST:PORT --server-pid PID]

Each image is first sent once on its own; that answer is the reference. Then ``--concurrency`` clients send the
images round-robin for ``--duration`` seconds, and every answer is compared with its image's reference (same texts,
boxes and scores within float32 batching noise). A refusal for overload (``UNAVAILABLE``) is counted, not retried.
Every ``--sample-every`` seconds the proportional set size (PSS: shared memory counted once) of the server and its
steps' processes is summed. Without ``--url`` the server is started here on ``--repository``.

The summary (``--out``/summary.json and the last lines printed) gives answers, wrong answers, refusals, other errors,
whether the server crashed or restarted, and the memory after the warm-up and at the end of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

from alpr.client import Plate, PlateRecogniser, is_overload, plates_agree
from alpr.serving.server import TritonServer, step_processes
from benchmarks.inputs import mixed_scenes, read_images, real_photos, write_scenes

DEFAULT_OUT = Path("build") / "soak"
SCENES_PER_SIZE = 2
SCENE_SEED = 606
# Memory grows while the steps warm up (allocator arenas, shared-memory regions growing to the largest image): the
# first WARM_UP_SHARE of the samples are left out, then the first and last MEMORY_WINDOW of the rest are compared.
WARM_UP_SHARE = 0.2
MEMORY_WINDOW = 0.2


@dataclass
class SoakSummary:
    """What a soak run saw."""

    duration_s: float
    concurrency: int
    images: int
    answered: int = 0
    wrong: int = 0
    refused: int = 0
    errors: int = 0
    crashed: bool = False
    # Median PSS over the first and last MEMORY_WINDOW of the samples after the warm-up, and the peak.
    memory_start_mib: float = 0.0
    memory_end_mib: float = 0.0
    memory_peak_mib: float = 0.0
    memory_samples: list[tuple[float, float]] = field(default_factory=list)
    first_wrong: list[str] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)

    @property
    def memory_growth(self) -> float:
        """End over start of the sampled memory (1.0: flat)."""
        return self.memory_end_mib / self.memory_start_mib if self.memory_start_mib else float("nan")

    def lines(self) -> list[str]:
        return [
            f"soak: {self.duration_s:.0f} s at concurrency {self.concurrency} over {self.images} images",
            f"  answers {self.answered} ({self.answered / max(self.duration_s, 1e-9):.2f}/s), wrong {self.wrong}, "
            f"refused for overload {self.refused}, other errors {self.errors}, server crashed: {self.crashed}",
            f"  server memory (PSS, server and steps): {self.memory_start_mib:.0f} MiB after the warm-up, "
            f"{self.memory_end_mib:.0f} MiB at the end ({self.memory_growth:.3f}x), "
            f"peak {self.memory_peak_mib:.0f} MiB",
        ]


def process_family_pss_mib(server_pid: int) -> float:
    """PSS of the server and its steps' processes, in MiB (0 when the server is gone)."""
    total_kib = 0
    for pid in (server_pid, *(step.pid for step in step_processes(server_pid))):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def soak_images(out: Path) -> list[np.ndarray]:
    """Synthetic scenes of the mixed benchmark sizes and the shared real photos (when present)."""
    folder = write_scenes(mixed_scenes(SCENES_PER_SIZE), out / "images", seed=SCENE_SEED)
    return [item.image for item in read_images([*sorted(folder.iterdir()), *real_photos()])]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


class CheckedLoad:
    """``concurrency`` closed-loop clients sending ``images`` round-robin, each answer checked against its image's
    ``expected`` answer; a refused request is counted and not retried. Runs between ``start()`` and ``stop()``.

    ``answers`` holds (when, image index) of every answer, ``wrong`` the first wrong ones, ``errors`` the first
    errors other than overload.
    """

    def __init__(
        self, url: str, images: list[np.ndarray], expected: list[list[Plate]], concurrency: int, timeout_s: float = 120
    ) -> None:
        self.url, self.images, self.expected, self.timeout_s = url, images, expected, timeout_s
        self.answers: list[tuple[float, int]] = []
        self.wrong: list[str] = []
        self.errors: list[str] = []
        self.wrong_count = self.refused = self.error_count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(start,), daemon=True) for start in range(concurrency)
        ]

    def start(self) -> CheckedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def answered_since(self, moment: float) -> set[int]:
        """The images answered at or after ``moment`` (``time.monotonic()``)."""
        with self._lock:
            return {image for when, image in self.answers if when >= moment}

    def _client(self, start: int) -> None:
        with PlateRecogniser(self.url, timeout_s=self.timeout_s, retries=0) as recogniser:
            index = start
            while not self._stop.is_set():
                image = index % len(self.images)
                index += 1
                try:
                    plates = recogniser.recognise(self.images[image])
                except InferenceServerException as error:
                    with self._lock:
                        if is_overload(error):
                            self.refused += 1
                        else:
                            self.error_count += 1
                            if len(self.errors) < 5:
                                self.errors.append(str(error)[:300])
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.answers.append((time.monotonic(), image))
                    if not plates_agree(plates, self.expected[image]):
                        self.wrong_count += 1
                        if len(self.wrong) < 5:
                            self.wrong.append(f"image {image}: {plates} != {self.expected[image]}")


def soak(url: str, server_pid: int | None, images: list[np.ndarray], duration_s: float, concurrency: int,
         sample_every_s: float = 10.0) -> SoakSummary:  # fmt: skip
    """Run the soak against the server at ``url``; ``server_pid`` (when known) is sampled and watched."""
    with PlateRecogniser(url, timeout_s=120) as recogniser:
        expected = [recogniser.recognise(image) for image in images]
    summary = SoakSummary(duration_s=duration_s, concurrency=concurrency, images=len(images))
    steps_at_start = {step.pid for step in step_processes(server_pid)} if server_pid else set()
    load = CheckedLoad(url, images, expected, concurrency)
    started = time.monotonic()
    load.start()
    while (elapsed := time.monotonic() - started) < duration_s:
        if server_pid is not None:
            summary.memory_samples.append((round(elapsed, 1), round(process_family_pss_mib(server_pid), 1)))
        time.sleep(min(sample_every_s, max(0.0, duration_s - elapsed)))
    load.stop()
    summary.duration_s = time.monotonic() - started
    summary.answered, summary.wrong, summary.refused, summary.errors = (
        len(load.answers),
        load.wrong_count,
        load.refused,
        load.error_count,
    )
    summary.first_wrong, summary.first_errors = load.wrong, load.errors
    if server_pid is not None:
        summary.memory_samples.append((round(summary.duration_s, 1), round(process_family_pss_mib(server_pid), 1)))
        steps_now = {step.pid for step in step_processes(server_pid)}
        summary.crashed = not alive(server_pid) or steps_now != steps_at_start
        samples = [value for _, value in summary.memory_samples]
        memory = samples[round(len(samples) * WARM_UP_SHARE) :] or [0.0]
        window = max(1, round(len(memory) * MEMORY_WINDOW))
        summary.memory_start_mib = statistics.median(memory[:window])
        summary.memory_end_mib = statistics.median(memory[-window:])
        summary.memory_peak_mib = max(memory)
    return summary


@contextlib.contextmanager
def serving(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """The gRPC URL and server pid: the given server, or one started here on ``--repository``."""
    if args.url:
        yield args.url, args.server_pid
        return
    with TritonServer(args.repository, log_path=args.out / "server.log", startup_timeout_s=300) as server:
        assert server.process is not None
        yield server.endpoints.grpc_url, server.process.pid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=16, help="clients, each with one request in flight")
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one on --repository)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, to sample its memory")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="images, server log and summary.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = soak_images(args.out)
    with serving(args) as (url, server_pid):
        summary = soak(url, server_pid, images, args.duration, args.concurrency, args.sample_every)
    report = {**asdict(summary), "memory_growth": summary.memory_growth}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(summary.lines()))
    return 0 if summary.wrong == 0 and summary.errors == 0 and not summary.crashed else 1


if __name__ == "__main__":
    sys.exit(main())
