"""Deterministic synthetic data sets: detector scenes, recogniser plate patches, and the fixed held-out set.

Every item is drawn from its own generator seeded by ``(seed, index)``, so any slice of a data set can be rebuilt,
in any order or in parallel, byte for byte.

Command line::

    python -m alpr.synth.dataset --out DIR --scenes N --seed S [--size 1920x1080 | --sizes mixed] [--plates N]
    python -m alpr.synth.dataset --out DIR --heldout

writes ``images/*.jpg`` with YOLO labels ``labels/*.txt`` (class 0, normalised cx cy w h) and ``annotations.json``,
and with ``--plates`` also ``plates/*.png`` with ``plates.json`` (file, text, corners).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from alpr.synth.scenes import PlateInstance, PlateSample, Scene, make_plate_patch, make_scene

# Frame sizes as (height, width).
MIXED_SIZES: tuple[tuple[int, int], ...] = ((480, 640), (720, 1280), (1080, 1920))
DETECTOR_SIZES: tuple[tuple[int, int], ...] = ((640, 640),)
MAX_PLATES_PER_SCENE = 4
EMPTY_SCENE_SHARE = 0.1
# Recogniser patches: frontal plate width in pixels, log-uniform like the scenes' plates. Below about 24 px the
# characters are two or three pixels wide and no longer readable.
PATCH_PLATE_WIDTHS = (24.0, 260.0)

# The held-out evaluation set: never train on this seed.
HELDOUT_SEED = 31337
HELDOUT_COUNT = 300
HELDOUT_SIZES = MIXED_SIZES

JPEG_QUALITY = 95
PLATE_CLASS = 0


SCENE_STREAM = 0
PLATE_STREAM = 1


def item_rng(seed: int, index: int, stream: int = SCENE_STREAM) -> np.random.Generator:
    """The generator of item ``index`` of the data set ``seed``; scenes and plate patches use separate streams."""
    return np.random.default_rng((seed, index, stream))


def scene_at(
    seed: int,
    index: int,
    sizes: Sequence[tuple[int, int]] = MIXED_SIZES,
    max_plates: int = MAX_PLATES_PER_SCENE,
    empty_share: float = EMPTY_SCENE_SHARE,
    camera: bool = True,
) -> Scene:
    """Scene ``index`` of the data set ``seed``: a size from ``sizes`` (height, width), 0..``max_plates`` plates.

    ``camera=False``: the same scene without the camera effects (see ``make_scene``).
    """
    rng = item_rng(seed, index)
    height, width = sizes[rng.integers(len(sizes))]
    num_plates = 0 if rng.random() < empty_share else int(rng.integers(1, max_plates + 1))
    return make_scene(rng, height, width, num_plates, camera=camera)


def iter_scenes(
    seed: int,
    count: int,
    sizes: Sequence[tuple[int, int]] = MIXED_SIZES,
    max_plates: int = MAX_PLATES_PER_SCENE,
    empty_share: float = EMPTY_SCENE_SHARE,
    start: int = 0,
    camera: bool = True,
) -> Iterator[Scene]:
    """Scenes ``start .. start + count - 1`` of the data set ``seed``, always the same for the same arguments."""
    for index in range(start, start + count):
        yield scene_at(seed, index, sizes, max_plates, empty_share, camera)


def random_plate_patch(rng: np.random.Generator, widths: tuple[float, float] = PATCH_PLATE_WIDTHS) -> PlateSample:
    """One recogniser patch with a plate ``widths[0]``..``widths[1]`` pixels wide (log-uniform)."""
    log_width = rng.uniform(math.log(widths[0]), math.log(widths[1]))
    return make_plate_patch(rng, float(math.exp(log_width)))


def plate_samples(
    rng: np.random.Generator, n: int, widths: tuple[float, float] = PATCH_PLATE_WIDTHS
) -> list[PlateSample]:
    """``n`` plates (image, text, corners), each warped into a small context patch with the scenes' degradations.

    The trainer crops each patch with the serving geometry from the box of its corners (see ``plate_box``).
    """
    return [random_plate_patch(rng, widths) for _ in range(n)]


def plate_box(corners: np.ndarray) -> tuple[float, float, float, float]:
    """Tight axis-aligned box (x1, y1, x2, y2) of a plate quad."""
    x1, y1 = corners.min(axis=0).tolist()
    x2, y2 = corners.max(axis=0).tolist()
    return x1, y1, x2, y2


def yolo_label_lines(plates: Sequence[PlateInstance], height: int, width: int) -> list[str]:
    """YOLO label lines ``class cx cy w h`` (normalised to the image) for the plates of a scene."""
    lines = []
    for plate in plates:
        x1, y1, x2, y2 = plate.box_xyxy
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{PLATE_CLASS} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` (width x height, as people write it) -> (height, width)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


class _Job(NamedTuple):
    seed: int
    item: int  # not ``index``, which would shadow tuple.index
    sizes: tuple[tuple[int, int], ...]
    out: Path


def _rounded(values: np.ndarray) -> list:
    """Coordinates as JSON lists with 3 decimals (float32 values would print with spurious digits)."""
    return np.round(values.astype(np.float64), 3).tolist()


def _write_scene(job: _Job) -> dict:
    cv2.setNumThreads(1)
    scene = scene_at(job.seed, job.item, job.sizes)
    height, width = scene.image.shape[:2]
    name = f"{job.item:06d}"
    cv2.imwrite(str(job.out / "images" / f"{name}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    lines = yolo_label_lines(scene.plates, height, width)
    (job.out / "labels" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    return {
        "file": f"images/{name}.jpg",
        "height": height,
        "width": width,
        "boxes_xyxy": [_rounded(np.array(plate.box_xyxy)) for plate in scene.plates],
        "corners": [_rounded(plate.corners) for plate in scene.plates],
        "texts": [plate.text for plate in scene.plates],
        "occluded": [plate.occluded for plate in scene.plates],
    }


def _write_plate(job: _Job) -> dict:
    cv2.setNumThreads(1)
    sample = random_plate_patch(item_rng(job.seed, job.item, PLATE_STREAM))
    name = f"plates/{job.item:06d}.png"
    cv2.imwrite(str(job.out / name), sample.image)
    return {"file": name, "text": sample.text, "corners": _rounded(sample.corners)}


def _map(function: Callable[[_Job], dict], jobs: list[_Job], workers: int, desc: str) -> list[dict]:
    """``function`` over ``jobs`` in order, in ``workers`` processes."""
    if workers <= 1:
        return [function(job) for job in tqdm(jobs, desc=desc)]
    with multiprocessing.Pool(workers) as pool:
        return list(tqdm(pool.imap(function, jobs, chunksize=4), total=len(jobs), desc=desc))


def write_dataset(
    out: Path, seed: int, scenes: int, sizes: Sequence[tuple[int, int]], plates: int = 0, workers: int = 1
) -> None:
    """Write ``scenes`` scenes (images, YOLO labels, annotations.json) and ``plates`` plate patches under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = tuple(sizes)
    if scenes:
        (out / "images").mkdir(exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
        records = _map(_write_scene, [_Job(seed, i, sizes, out) for i in range(scenes)], workers, "scenes")
        annotations = {"seed": seed, "sizes_hw": [list(size) for size in sizes], "images": records}
        (out / "annotations.json").write_text(json.dumps(annotations))
    if plates:
        (out / "plates").mkdir(exist_ok=True)
        records = _map(_write_plate, [_Job(seed, i, sizes, out) for i in range(plates)], workers, "plates")
        (out / "plates.json").write_text("[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--scenes", type=int, default=0, help="number of scenes")
    parser.add_argument("--plates", type=int, default=0, help="number of recogniser plate patches")
    parser.add_argument("--seed", type=int, default=0)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size", type=parse_size, help="one frame size, WIDTHxHEIGHT (default 640x640)")
    size.add_argument("--sizes", choices=["mixed"], help="mixed: 640x480, 1280x720 and 1920x1080")
    parser.add_argument(
        "--heldout", action="store_true", help=f"write the held-out set ({HELDOUT_COUNT} mixed scenes, fixed seed)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    args = parser.parse_args(argv)
    if args.heldout:
        if args.scenes or args.size or args.sizes:
            parser.error("--heldout fixes the seed, count and sizes")
        write_dataset(args.out, HELDOUT_SEED, HELDOUT_COUNT, HELDOUT_SIZES, args.plates, args.workers)
        return
    if args.seed == HELDOUT_SEED:
        parser.error(f"seed {HELDOUT_SEED} is reserved for the held-out set")
    sizes = MIXED_SIZES if args.sizes == "mixed" else (args.size,) if args.size else DETECTOR_SIZES
    write_dataset(args.out, args.seed, args.scenes, sizes, args.plates, args.workers)


if __name__ == "__main__":
    main()
