"""Train STN + LPRNet on synthetic plates with CTC (Graves et al. 2006), as the recogniser is trained upstream.

Every plate is cut from its context patch by the served crop geometry (``alpr.geometry``) around a box jittered
like a detector's, so the recogniser learns on exactly what the ``crop`` graph feeds it.
``python -m alpr.train.recogniser --help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from alpr import ctc, paths, vocab
from alpr.geometry import crop_plates
from alpr.metrics import edit_distance
from alpr.models import STN, LPRNet, load_lprnet, load_stn, save_checkpoint
from alpr.synth.dataset import PATCH_PLATE_WIDTHS, plate_samples
from alpr.train.common import (
    Schedule,
    Throughput,
    TrainState,
    load_training_checkpoint,
    pick_device,
    save_training_checkpoint,
    training_batches,
    training_parser,
    write_report,
)

BOX_JITTER = 0.06  # of the box size: how far a detector's box may stray from the tight plate box


def jittered_box(corners: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """The tight box of a plate quad, each side moved by up to ``jitter`` of the box size."""
    x1, y1 = corners.min(0)
    x2, y2 = corners.max(0)
    w, h = x2 - x1, y2 - y1
    noise = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
    return (np.array([x1, y1, x2, y2]) + noise).astype(np.float32)


class PlateCrops:
    """Batches of normalised 3x24x94 crops with CTC targets."""

    def __init__(
        self,
        batch_size: int,
        jitter: float = BOX_JITTER,
        crops_per_plate: int = 1,
        widths: tuple[float, float] = PATCH_PLATE_WIDTHS,
    ) -> None:
        self.batch_size = batch_size
        self.jitter = jitter
        self.crops_per_plate = crops_per_plate
        self.widths = widths

    def __call__(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Rendering dominates the cost, so a plate may serve several differently jittered crops of one batch.
        samples = plate_samples(rng, self.batch_size // self.crops_per_plate, self.widths) * self.crops_per_plate
        crops = torch.cat(
            [crop_plates(sample.image, jittered_box(sample.corners, rng, self.jitter)[None]) for sample in samples]
        )
        labels = [torch.tensor(vocab.encode(sample.text)) for sample in samples]
        return crops, torch.cat(labels), torch.tensor([len(label) for label in labels])


class Recogniser(nn.Module):
    """STN then LPRNet: the two served graphs, trained end to end."""

    def __init__(self) -> None:
        super().__init__()
        self.stn = STN()
        self.lprnet = LPRNet()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.lprnet(self.stn(crops))


def evaluate(model: Recogniser, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], device) -> dict:
    """Exact-match accuracy and character error rate on fixed batches."""
    model.eval()
    exact, edits, characters, count = 0, 0, 0, 0
    with torch.no_grad():
        for crops, labels, lengths in batches:
            logits = model(crops.to(device)).cpu().numpy()
            texts = ctc.greedy_decode(logits)
            for text, label in zip(texts, torch.split(labels, lengths.tolist()), strict=True):
                truth = vocab.decode(label.tolist())
                exact += text == truth
                edits += edit_distance(text, truth)
                characters += len(truth)
                count += 1
    model.train()
    return {"exact_match": exact / count, "cer": edits / characters, "plates": count}


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) and write the default STN and LPRNet weights and a metrics report."""
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = Recogniser()
    if args.init_stn:
        model.stn.load_state_dict(load_stn(args.init_stn).state_dict())
    if args.init_lprnet:
        model.lprnet.load_state_dict(load_lprnet(args.init_lprnet).state_dict())
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ctc_loss = nn.CTCLoss(blank=vocab.BLANK_INDEX, zero_infinity=True)
    run_dir = Path(args.run_dir)
    checkpoint = run_dir / "last.pt"
    state = TrainState()
    if args.resume and checkpoint.exists():
        state = load_training_checkpoint(checkpoint, {"recogniser": model}, optimizer)
        print(f"resumed from {checkpoint} at iteration {state.iteration}")

    validation_rng = np.random.default_rng(args.seed + 10_000_000)
    validation = [PlateCrops(128, jitter=BOX_JITTER / 2)(validation_rng) for _ in range(args.validation_batches)]
    stream = training_batches(
        PlateCrops(args.batch_size, crops_per_plate=args.crops_per_plate, widths=tuple(args.plate_widths)),
        args,
        device,
        state.iteration,
    )

    def validate() -> dict:
        metrics = evaluate(model, validation, device)
        state.history.append({"iteration": state.iteration, "loss": smoothed_loss, **metrics})
        save_training_checkpoint(checkpoint, {"recogniser": model}, optimizer, state)
        return metrics

    schedule = Schedule(state, args.iterations, args.lr, args.warmup, args.time_budget)
    speed = Throughput()
    progress = tqdm(total=args.iterations, initial=state.iteration, desc="recogniser", dynamic_ncols=True)
    smoothed_loss = None
    metrics: dict = {}
    while not schedule.finished():
        lr = schedule.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        (crops, labels, lengths), fresh = next(stream)
        state.fresh_batches += fresh
        log_probs = model(crops).permute(2, 0, 1).log_softmax(2)  # [T, B, C] as CTCLoss wants
        input_lengths = torch.full((crops.shape[0],), log_probs.shape[0], dtype=torch.long)
        loss = ctc_loss(log_probs, labels, input_lengths, lengths.cpu())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.iteration += 1
        step_loss = float(loss.detach())
        smoothed_loss = step_loss if smoothed_loss is None else 0.95 * smoothed_loss + 0.05 * step_loss
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss diverged at iteration {state.iteration}")
        if state.iteration % args.eval_every == 0:
            metrics = validate()
        progress.set_postfix(
            lr=f"{lr:.2e}",
            loss=f"{smoothed_loss:.3f}",
            crops_s=f"{speed.add(args.batch_size):.0f}",
            exact=f"{metrics.get('exact_match', float('nan')):.3f}",
        )
        progress.update()
    if state.iteration % args.eval_every or not metrics:  # the last step's validation, unless just done
        metrics = validate()
    progress.close()

    model.eval().cpu()
    meta = {"iterations": state.iteration, "seed": args.seed}
    save_checkpoint(model.stn, Path(args.stn_output), arch="stn", half=True, **meta)
    save_checkpoint(model.lprnet, Path(args.lprnet_output), arch="lprnet", half=True, **meta)
    report = {
        "iterations": state.iteration,
        "fresh_batches": state.fresh_batches,
        "training_seconds": round(state.seconds, 1),
        "batch_size": args.batch_size,
        "plate_widths": list(args.plate_widths),
        "final_loss": smoothed_loss,
        "validation": metrics,
        "weights": [args.stn_output, args.lprnet_output],
    }
    write_report(run_dir / "report.json", report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser(__doc__, run_dir="runs/recogniser", iterations=2800, batch_size=32, weight_decay=1e-4)
    parser.add_argument("--crops-per-plate", type=int, default=2, help="jittered crops cut from each rendered plate")
    parser.add_argument(
        "--plate-widths",
        nargs=2,
        type=float,
        default=list(PATCH_PLATE_WIDTHS),
        metavar=("MIN", "MAX"),
        help="training plates are MIN..MAX px wide, log-uniform (validation keeps the default range)",
    )
    parser.add_argument("--validation-batches", type=int, default=4, help="fixed batches of 128 for validation")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--stn-output", default=str(paths.default_weights("stn")))
    parser.add_argument("--lprnet-output", default=str(paths.default_weights("lprnet")))
    parser.add_argument("--init-stn", help="start the STN from these weights instead of at random")
    parser.add_argument("--init-lprnet", help="start LPRNet from these weights instead of at random")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
