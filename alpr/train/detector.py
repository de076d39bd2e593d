"""Train the YOLOv5 plate detector on real photos and synthetic street scenes.

A share ``--real-share`` of the training tiles comes from the train split of the real labelled photos
(``alpr.realdata``), half of them with rendered Russian plates pasted over the boxed plates, at random scales; the rest
from synthetic scenes.

Scenes are rendered at several frame sizes, letterboxed to the 640x640 detector input by the whole-image view that
the served ``preprocess`` step draws (``alpr.views``, as the cpu target serves it), and cut into square training
tiles (the network
is fully convolutional, so a 320-pixel tile teaches the same plate scales as the full 640 input at a quarter of the
cost, which is what makes training on a laptop CPU practical).
``python -m alpr.train.detector --help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from alpr import paths, realdata, spec
from alpr.geometry import letterbox_transform
from alpr.models import YOLOv5, load_detector, save_checkpoint
from alpr.synth.scenes import MAX_DISTRACTORS, make_scene
from alpr.train.common import (
    Schedule,
    Throughput,
    TrainState,
    WeightAverage,
    load_training_checkpoint,
    pick_device,
    save_training_checkpoint,
    training_batches,
    training_parser,
    write_report,
)
from alpr.train.yolo_loss import YOLOv5Loss
from alpr.views import letterbox_views, window_corners

# (height, width, weight): frame sizes of the training scenes; small renders are cheap, large ones teach real
# downscaling. Plate sizes scale with the frame, so every size covers the whole 30-250 px (at 1080p) range.
FRAME_SIZES = ((360, 640, 4), (480, 640, 2), (640, 480, 1), (720, 1280, 2), (1080, 1920, 1))
PLATES_PER_SCENE = (0, 1, 2, 3, 4, 5)
PLATES_WEIGHTS = (0.08, 0.32, 0.25, 0.15, 0.12, 0.08)
MIN_VISIBLE_FRACTION = 0.6
# Real training tiles: how often a photo's plates become Russian ones, and the plate widths on the 640 detector canvas
# that its random scale gives (from a distant plate in the whole view of a 4K frame to a close-up).
PASTE_SHARE = 0.5
CANVAS_PLATE_WIDTHS = (14.0, 300.0)
MAX_PHOTO_SCALE = 4.0
MOSAIC_MAX_PLATE_WIDTH = 90.0


def visible_boxes(
    boxes: np.ndarray, window: tuple[float, float, float, float]
) -> list[tuple[float, float, float, float]]:
    """Boxes ``[N, 4]`` seen through ``window`` (x0, y0, x1, y1), in window pixels, clipped to it.

    A box keeps its label when at least ``MIN_VISIBLE_FRACTION`` of it shows; a sliver is no plate to learn.
    """
    x0, y0, x1, y1 = window
    kept = []
    for bx1, by1, bx2, by2 in boxes - np.array([x0, y0, x0, y0]):
        cx1, cy1, cx2, cy2 = max(bx1, 0.0), max(by1, 0.0), min(bx2, x1 - x0), min(by2, y1 - y0)
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            continue
        if (cx2 - cx1) * (cy2 - cy1) >= MIN_VISIBLE_FRACTION * (bx2 - bx1) * (by2 - by1):
            kept.append((cx1, cy1, cx2, cy2))
    return kept


class SceneTiles:
    """Letterboxed tiles of synthetic scenes with their plate boxes in tile pixels.

    A share ``tile_views`` of the scenes is seen through one of the served tile views (``spec.TILE_GRID``) rather
    than whole, so that the detector also learns the scale at which the tiles show plates and distractors.
    """

    def __init__(
        self, batch_size: int, tile_size: int, tile_views: float = 0.0, max_distractors: int = MAX_DISTRACTORS
    ) -> None:
        self.batch_size = batch_size
        self.tile_size = tile_size
        self.tile_views = tile_views
        self.max_distractors = max_distractors
        sizes = np.array([s[2] for s in FRAME_SIZES], dtype=float)
        self.size_probabilities = sizes / sizes.sum()

    def _view(self, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, float, float]:
        """A scene's whole or tile view letterboxed to the detector input, its plate boxes on that canvas, and the
        canvas paddings (pad_x, pad_y)."""
        height, width, _ = FRAME_SIZES[rng.choice(len(FRAME_SIZES), p=self.size_probabilities)]
        num_plates = int(rng.choice(PLATES_PER_SCENE, p=PLATES_WEIGHTS))
        scene = make_scene(rng, height, width, num_plates, self.max_distractors)
        image = scene.image
        boxes = np.array([p.box_xyxy for p in scene.plates], dtype=np.float64).reshape(-1, 4)
        tiles = window_corners(height, width, spec.TILE_GRID)[1:]  # none for a frame that fits the canvas
        if tiles and rng.random() < self.tile_views:
            x0, y0, x1, y1 = tiles[rng.integers(len(tiles))]
            image = np.ascontiguousarray(image[y0:y1, x0:x1])
            boxes = np.array(visible_boxes(boxes, (x0, y0, x1, y1)), dtype=np.float64).reshape(-1, 4)
        letterboxed = torch.from_numpy(letterbox_views(image, grid=1)[0])  # the pixels the cpu target serves
        scale, pad_x, pad_y = letterbox_transform(*image.shape[:2])
        return letterboxed, boxes * scale + np.array([pad_x, pad_y, pad_x, pad_y]), pad_x, pad_y

    def tile(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[tuple[float, float, float, float]]]:
        """One synthetic tile and its plate boxes in tile pixels."""
        letterboxed, boxes, pad_x, pad_y = self._view(rng)
        size, limit = self.tile_size, spec.DETECTOR_SIZE - self.tile_size
        if len(boxes) and rng.random() < 0.75:
            centre = boxes[rng.integers(len(boxes))]
            cx, cy = (centre[0] + centre[2]) / 2, (centre[1] + centre[3]) / 2
            left = cx - size / 2 + rng.uniform(-0.35, 0.35) * size
            top = cy - size / 2 + rng.uniform(-0.35, 0.35) * size
        else:
            left = rng.uniform(pad_x - size / 2, spec.DETECTOR_SIZE - pad_x - size / 2)
            top = rng.uniform(pad_y - size / 2, spec.DETECTOR_SIZE - pad_y - size / 2)
        left, top = int(np.clip(left, 0, limit)), int(np.clip(top, 0, limit))
        tile = letterboxed[:, top : top + size, left : left + size]
        return tile, visible_boxes(boxes, (left, top, left + size, top + size))


class RealTiles:
    """Training tiles from real labelled photos, as RGB planes ``[3, T, T]`` with plate boxes ``[N, 4]`` in tile pixels.

    Each photo is drawn at a random scale that puts its plates at a log-uniform width on the 640 detector canvas (in
    the served whole view a 1280 px photo shows its plates at half their width, a 1080p frame at a third), mirrored
    half the time, with mild camera changes. Half the tiles show one photo around one of its plates (or anywhere);
    the others are a mosaic of four photos at small scales, so that small plates come with a scene around them rather
    than grey. Where no photo reaches, the tile is the letterbox grey.
    """

    def __init__(self, photos: list[realdata.RealPhoto], tile_size: int) -> None:
        if not photos:
            raise FileNotFoundError(f"no real training photos under {realdata.realtrain_dir()}")
        self.photos = photos
        self.tile_size = tile_size

    def _photo(self, rng: np.random.Generator, widths: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """A random photo, maybe with Russian plates pasted, scaled so that its plates are ``widths`` wide."""
        photo = self.photos[int(rng.integers(len(self.photos)))]
        image, boxes = realdata.read_photo(photo.path), photo.boxes.copy()
        if len(boxes) and rng.random() < PASTE_SHARE:
            image = realdata.paste_russian_plates(rng, image, boxes)
        if rng.random() < 0.5:
            image = image[:, ::-1]
            boxes[:, [0, 2]] = image.shape[1] - boxes[:, [2, 0]]
        height, width = image.shape[:2]
        reference = float(np.median(boxes[:, 2] - boxes[:, 0])) if len(boxes) else width * 0.2
        scale = math.exp(rng.uniform(math.log(widths[0]), math.log(widths[1]))) / max(reference, 1.0)
        scale = min(scale, MAX_PHOTO_SCALE * spec.DETECTOR_SIZE / max(height, width))
        aspect = math.exp(rng.uniform(-0.15, 0.15))  # the CC BY photos were stretched to 416x416; lenses vary too
        new_w, new_h = max(1, round(width * scale * aspect)), max(1, round(height * scale / aspect))
        # Bilinear without anti-aliasing, as the served preprocess graph resamples.
        image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return realdata.camera_jitter(rng, image), boxes * np.array([new_w / width, new_h / height] * 2)

    @staticmethod
    def _anchor(rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray) -> tuple[float, float]:
        """A point of the photo to centre on: one of its plates most of the time, else anywhere."""
        if len(boxes) and rng.random() < 0.8:
            x1, y1, x2, y2 = boxes[int(rng.integers(len(boxes)))]
            return (x1 + x2) / 2, (y1 + y2) / 2
        return rng.uniform(0, image.shape[1]), rng.uniform(0, image.shape[0])

    @staticmethod
    def _place(
        tile: np.ndarray, image: np.ndarray, boxes: np.ndarray, origin: tuple[int, int], region: tuple[int, ...]
    ) -> list[tuple[float, float, float, float]]:
        """Copy ``image`` with its top-left corner at tile pixel ``origin`` into ``region`` (x0, y0, x1, y1) of the
        tile; returns its plates visible there, in tile pixels."""
        left, top = origin
        x0, y0 = max(region[0], left), max(region[1], top)
        x1, y1 = min(region[2], left + image.shape[1]), min(region[3], top + image.shape[0])
        if x1 <= x0 or y1 <= y0:
            return []
        tile[y0:y1, x0:x1] = image[y0 - top : y1 - top, x0 - left : x1 - left]
        window = (x0 - left, y0 - top, x1 - left, y1 - top)
        return [(a + x0, b + y0, c + x0, d + y0) for a, b, c, d in visible_boxes(boxes, window)]

    def __call__(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[tuple[float, float, float, float]]]:
        size = self.tile_size
        tile = np.full((size, size, 3), spec.LETTERBOX_FILL, np.uint8)
        plates: list[tuple[float, float, float, float]] = []
        if rng.random() < 0.5:
            image, boxes = self._photo(rng, CANVAS_PLATE_WIDTHS)
            cx, cy = self._anchor(rng, image, boxes)
            left = round(size / 2 - cx + rng.uniform(-0.4, 0.4) * size)
            top = round(size / 2 - cy + rng.uniform(-0.4, 0.4) * size)
            plates += self._place(tile, image, boxes, (left, top), (0, 0, size, size))
        else:
            split_x, split_y = (round(rng.uniform(0.3, 0.7) * size) for _ in range(2))
            for x0, x1 in ((0, split_x), (split_x, size)):
                for y0, y1 in ((0, split_y), (split_y, size)):
                    image, boxes = self._photo(rng, (CANVAS_PLATE_WIDTHS[0], MOSAIC_MAX_PLATE_WIDTH))
                    cx, cy = self._anchor(rng, image, boxes)
                    left, top = round(rng.uniform(x0, x1) - cx), round(rng.uniform(y0, y1) - cy)
                    plates += self._place(tile, image, boxes, (left, top), (x0, y0, x1, y1))
        return torch.from_numpy(np.ascontiguousarray(tile[..., ::-1].transpose(2, 0, 1))), plates


class TrainingTiles:
    """Batches of real and synthetic tiles with YOLO targets ``(image, class, cx, cy, w, h)`` in tile pixels."""

    def __init__(self, scenes: SceneTiles, real: RealTiles | None, real_share: float) -> None:
        self.scenes = scenes
        self.real = real
        self.real_share = real_share if real is not None else 0.0

    def __call__(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        size, batch_size = self.scenes.tile_size, self.scenes.batch_size
        tiles = torch.empty((batch_size, 3, size, size), dtype=torch.uint8)
        targets = []
        for index in range(batch_size):
            source = self.real if self.real is not None and rng.random() < self.real_share else self.scenes.tile
            tile, boxes = source(rng)
            tiles[index] = tile
            for x1, y1, x2, y2 in boxes:
                targets.append((index, 0, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
        return tiles, torch.tensor(targets, dtype=torch.float32).reshape(-1, 6)


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) and write the default detector weights and a metrics report."""
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = YOLOv5(args.scale, num_classes=1)
    if args.init:
        model.load_state_dict(load_detector(args.init).state_dict())
    model = model.to(device).train()
    criterion = YOLOv5Loss(model.anchors, model.stride, num_classes=1, image_size=args.tile_size).to(device)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.937, 0.999),
    )
    run_dir = Path(args.run_dir)
    checkpoint = run_dir / "last.pt"
    average = WeightAverage(model, args.ema_decay) if args.ema_decay > 0 else None
    models = {"detector": model, **({"average": average.model} if average else {})}
    state = TrainState()
    if args.resume and checkpoint.exists():
        state = load_training_checkpoint(checkpoint, models, optimizer, optional=("average",))
        print(f"resumed from {checkpoint} at iteration {state.iteration}")

    scenes = SceneTiles(args.batch_size, args.tile_size, args.tile_views, args.max_distractors)
    real = RealTiles(realdata.real_photos("train"), args.tile_size) if args.real_share > 0 else None
    stream = training_batches(TrainingTiles(scenes, real, args.real_share), args, device, state.iteration)
    schedule = Schedule(state, args.iterations, args.lr, args.warmup, args.time_budget)
    speed = Throughput()
    progress = tqdm(total=args.iterations, initial=state.iteration, desc="detector", dynamic_ncols=True)
    smoothed: dict[str, float] = {}
    while not schedule.finished():
        lr = schedule.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        (tiles, targets), fresh = next(stream)
        state.fresh_batches += fresh
        images = tiles.float() / 255.0
        loss, parts = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        state.iteration += 1
        if average is not None:
            average.update(model, state.iteration)
        step_loss = float(loss.detach())
        for key, value in {**parts, "loss": step_loss / args.batch_size}.items():
            smoothed[key] = value if key not in smoothed else 0.95 * smoothed[key] + 0.05 * value
        progress.set_postfix(
            lr=f"{lr:.2e}", img_s=f"{speed.add(args.batch_size):.1f}", **{k: f"{v:.4f}" for k, v in smoothed.items()}
        )
        progress.update()
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss diverged at iteration {state.iteration}")
        if state.iteration % args.log_every == 0:
            state.history.append({"iteration": state.iteration, "lr": lr, **smoothed})
        if state.iteration % args.save_every == 0:
            save_training_checkpoint(checkpoint, models, optimizer, state)
    if state.iteration % args.save_every:  # the last step's checkpoint, unless just written
        save_training_checkpoint(checkpoint, models, optimizer, state)
    progress.close()

    # The weight average, where one was kept, is the run's result; the last step's weights stay in last.pt.
    trained = average.model if average is not None else model.eval()
    save_checkpoint(
        trained.cpu(),
        Path(args.output),
        arch=f"yolov5{args.scale}",
        half=True,
        num_classes=1,
        iterations=state.iteration,
        tile_size=args.tile_size,
        seed=args.seed,
    )
    report = {
        "model": f"yolov5{args.scale}",
        "iterations": state.iteration,
        "fresh_batches": state.fresh_batches,
        "training_seconds": round(state.seconds, 1),
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "tile_views": args.tile_views,
        "max_distractors": args.max_distractors,
        "real_share": args.real_share,
        "ema_decay": args.ema_decay,
        "real_training_photos": len(real.photos) if real is not None else 0,
        "final_losses": smoothed,
        "weights": str(args.output),
    }
    write_report(run_dir / "report.json", report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = training_parser(__doc__, run_dir="runs/detector", iterations=2200, batch_size=16, weight_decay=5e-4)
    parser.add_argument("--scale", default="n", choices=["n", "s", "m", "l", "x"], help="YOLOv5 scale")
    parser.add_argument("--tile-size", type=int, default=320, help="square training tile cut from the 640 input")
    parser.add_argument(
        "--tile-views", type=float, default=0.0, metavar="SHARE",
        help="share of scenes seen through one of the served tile views instead of whole",
    )  # fmt: skip
    parser.add_argument(
        "--max-distractors", type=int, default=MAX_DISTRACTORS, help="plate-like non-plates per scene, 1 to this"
    )
    parser.add_argument(
        "--real-share", type=float, default=0.0, metavar="SHARE",
        help="share of tiles cut from the real photos' train split (needs ../shared/realtrain)",
    )  # fmt: skip
    parser.add_argument("--output", default=str(paths.default_weights("detector")), help="final weights")
    parser.add_argument("--init", help="start from these weights (e.g. the committed defaults) instead of at random")
    parser.add_argument(
        "--ema-decay", type=float, default=0.0, metavar="DECAY",
        help="write a moving average of the weights, this decay per step (e.g. 0.998), instead of the last step's",
    )  # fmt: skip
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=25)
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
