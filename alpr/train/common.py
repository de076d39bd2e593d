"""What both trainers share: device choice, resumable checkpoints, a background data stream, and reports."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """The GPU when one is present (or asked for), else the CPU."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input sizes are fixed for a whole run
    return device


@dataclass
class TrainState:
    """Everything needed to resume a run exactly where it stopped."""

    iteration: int = 0
    seconds: float = 0.0  # time spent training, summed over resumes
    fresh_batches: int = 0  # of the iterations, those on newly rendered data rather than replayed
    history: list[dict[str, float | None]] = field(default_factory=list)  # loss None: validated before any step


def save_training_checkpoint(
    path: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    """Atomically write models, optimizer and progress, so an interrupted run resumes with ``--resume``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "models": {name: model.state_dict() for name, model in models.items()},
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_training_checkpoint(
    path: Path,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    optional: tuple[str, ...] = (),
) -> TrainState:
    """Restore what ``save_training_checkpoint`` wrote; the ``optional`` models keep their state where it holds none."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    for name, model in models.items():
        if name in optional and name not in payload["models"]:
            continue
        model.load_state_dict(payload["models"][name])
    optimizer.load_state_dict(payload["optimizer"])
    return TrainState(**payload["state"])


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics, taken after every step (as
    YOLOv5 trains): it averages out the last steps' noise, which a batch of 16 tiles leaves large.

    The decay ramps up from 0 over about ``ramp`` steps, so that the average soon leaves the starting weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float, ramp: float = 200.0) -> None:
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.ramp = ramp

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold ``model`` in after optimiser step ``step`` (1-based)."""
        decay = self.decay * (1 - math.exp(-step / self.ramp))
        for average, current in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if average.dtype.is_floating_point:
                average.mul_(decay).add_(current.detach(), alpha=1 - decay)
            else:
                average.copy_(current)


class _StreamDataset(torch.utils.data.IterableDataset):
    """Endless batches from ``make_batch(rng)``, each worker seeded from the run's seed and its resume point."""

    def __init__(self, make_batch: Callable[[Any], Any], seed: int) -> None:
        super().__init__()
        self.make_batch = make_batch
        self.seed = seed

    def __iter__(self) -> Iterator[Any]:
        import numpy as np

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)
        try:
            import cv2

            cv2.setNumThreads(1)
        except ImportError:  # pragma: no cover - cv2 is a dependency
            pass
        rng = np.random.default_rng([self.seed, worker])
        while True:
            yield self.make_batch(rng)


def batch_stream(make_batch: Callable[[Any], Any], seed: int, workers: int) -> Iterator[Any]:
    """Batches produced in ``workers`` background processes (in this process when 0)."""
    loader = torch.utils.data.DataLoader(
        _StreamDataset(make_batch, seed),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=bool(workers),
        # Spawned, not forked: a fork after torch has run threaded ops in this process can deadlock the child.
        multiprocessing_context="spawn" if workers else None,
    )
    return iter(loader)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a JSON metrics report and echo it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


class Schedule:
    """Linear warm-up, then cosine decay to 5 % of the base rate, over a step count or a wall-clock budget.

    With a time budget the decay follows the larger of the step and time fractions, so the rate reaches its floor
    when the budget is spent, however fast the machine turns out to be.
    """

    def __init__(self, state: TrainState, iterations: int, base_lr: float, warmup: int, budget_s: float = 0.0):
        self.state = state
        self.iterations = iterations
        self.base_lr = base_lr
        self.warmup = warmup
        self.budget_s = budget_s
        self._clock = time.perf_counter()

    def _time_fraction(self) -> float:
        now = time.perf_counter()
        self.state.seconds += now - self._clock
        self._clock = now
        return self.state.seconds / self.budget_s if self.budget_s > 0 else 0.0

    def finished(self) -> bool:
        """Whether the run has taken all its steps or spent its time budget."""
        return self.state.iteration >= self.iterations or self._time_fraction() >= 1.0

    def lr(self) -> float:
        """The learning rate for the next step."""
        iteration = self.state.iteration
        if iteration < self.warmup:
            return self.base_lr * (iteration + 1) / self.warmup
        progress = max((iteration - self.warmup) / max(1, self.iterations - self.warmup), self._time_fraction())
        return self.base_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def replayed(
    batches: Iterator[tuple[torch.Tensor, ...]], device: torch.device, max_ratio: int, capacity: int, seed: int
) -> Iterator[tuple[tuple[torch.Tensor, ...], bool]]:
    """``(batch, fresh)`` pairs: every rendered batch once, on ``device``, and recent ones again while rendering lags.

    On a GPU rendering scenes, not the network, limits the step rate. Rather than wait, the trainer repeats a batch
    drawn from the last ``capacity`` rendered ones, at most ``max_ratio - 1`` times per rendered batch. With
    ``max_ratio`` 1 it only moves batches to the device. It ends when ``batches`` ends and raises what rendering raised.
    """
    if max_ratio <= 1:
        for batch in batches:
            yield tuple(t.to(device, non_blocking=True) for t in batch), True
        return

    ready: queue.Queue = queue.Queue(maxsize=2)

    def produce() -> None:
        try:
            for batch in batches:
                ready.put(batch)
            ready.put(StopIteration())
        except Exception as error:  # surfaced in the training loop, which would otherwise wait forever
            ready.put(error)

    threading.Thread(target=produce, daemon=True, name="batches").start()
    recent: deque[tuple[torch.Tensor, ...]] = deque(maxlen=capacity)
    rng = random.Random(seed)
    repeats = 0
    while True:
        try:
            item = ready.get(block=not recent or repeats >= max_ratio - 1)
        except queue.Empty:
            repeats += 1
            yield recent[rng.randrange(len(recent))], False
            continue
        if isinstance(item, StopIteration):
            return
        if isinstance(item, Exception):
            raise item
        recent.append(tuple(t.to(device, non_blocking=True) for t in item))
        repeats = 0
        yield recent[-1], True


def training_batches(
    make_batch: Callable[[Any], Any], args: argparse.Namespace, device: torch.device, iteration: int
) -> Iterator[tuple[tuple[torch.Tensor, ...], bool]]:
    """A trainer's ``(batch, fresh)`` stream: rendered in ``--workers`` processes, replayed as ``--replay`` allows."""
    seed = args.seed + iteration
    return replayed(batch_stream(make_batch, seed, args.workers), device, args.replay, args.replay_capacity, seed)


class Throughput:
    """Samples per second over the run, for the progress bar."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.samples = 0

    def add(self, n: int) -> float:
        self.samples += n
        return self.samples / max(1e-9, time.perf_counter() - self.start)


def training_parser(
    description: str, *, run_dir: str, iterations: int, batch_size: int, weight_decay: float
) -> argparse.ArgumentParser:
    """The options both trainers share; the defaults are the first stage of the committed weights (see the README)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=iterations, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--weight-decay", type=float, default=weight_decay)
    parser.add_argument("--warmup", type=int, default=100, help="steps of linear warm-up")
    parser.add_argument(
        "--time-budget", type=float, default=0.0, metavar="SECONDS",
        help="stop after this much training time, the learning rate decaying over it (0: run all iterations)",
    )  # fmt: skip
    parser.add_argument(
        "--replay", type=int, default=1, metavar="N",
        help="while rendering lags the device, repeat recent batches, up to N steps per rendered batch (GPU runs)",
    )  # fmt: skip
    parser.add_argument(
        "--replay-capacity", type=int, default=512, help="rendered batches kept on the device for --replay"
    )
    parser.add_argument("--workers", type=int, default=1, help="data-generating processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=run_dir, help="resumable checkpoint and report")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    return parser
