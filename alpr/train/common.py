"""What both trainers share: device choice, resumable checkpoints, a background data stream, and reports."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """The GPU when one is present (or asked for), else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class TrainState:
    """Everything needed to resume a run exactly where it stopped."""

    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


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
    path: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer
) -> TrainState:
    """Restore what ``save_training_checkpoint`` wrote."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    for name, model in models.items():
        model.load_state_dict(payload["models"][name])
    optimizer.load_state_dict(payload["optimizer"])
    return TrainState(**payload["state"])


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
    )
    return iter(loader)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a JSON metrics report and echo it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def cosine_lr(iteration: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the base rate."""
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    return base_lr * (0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(progress * 3.141592653589793)).item()))


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
    parser.add_argument("--workers", type=int, default=1, help="data-generating processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=run_dir, help="resumable checkpoint and report")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    return parser
