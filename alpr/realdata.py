"""Real photos of vehicles with boxed plates (``../shared/realtrain``): reading them, their fixed splits, and the
detector's training tiles cut from them.

Two sets, read by path and never copied into the project (see their README):

* ``cc0-car-plates``: 433 photos, Pascal VOC boxes (CC0, "Car License Plate Detection" by andrewmvd);
* ``ccby-openimages-plates``: 350 Open Images photos at 416x416, YOLO boxes, class 0 the plate ("License Plates
  dataset by samrat-sahoo, from Open Images, CC BY 4.0"; its own train / valid / test folders).

The split is fixed by name, never by chance: ``test`` (reported by ``make eval``) is the CC BY set's ``test`` folder and
the CC0 photos ``CarsN`` with N % 10 == 0; ``validation`` (where ``make thresholds`` chooses the served thresholds) is
its ``valid`` folder and N % 10 == 5; everything else is ``train``. Training never sees validation or test.

The plates are from many countries and few, if any, are Russian. The training tiles therefore also paste rendered
Russian plates over a share of the boxed plates: the box gives the place, the size and the lighting.

Every labelled photo is 400-650 px on its long side, so it fits the detector's canvas and is seen whole, alone. Camera
images are larger (1280 px photos, 1080p video) and take the tiled path instead: the whole view among tiles, each with
its own threshold. ``samples`` therefore also lays a split's photos out at camera sizes (``LAYOUTS``):

* ``1280``: each photo enlarged to 1280 px on its long side, a close-up photo (validation plates then 40-440 px wide,
  median 200);
* ``1080p``: four photos to a 1920x1080 frame, each enlarged to fill its quarter (plates 20-280 px wide, median 90, as
  in dash-cam frames), so that a plate's surroundings are other scenes at other places in the frame.

Both are enlargements, softer than a camera's own pixels: they put real scenes through the tiled views and their
thresholds, they do not stand in for a sharper sensor.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from alpr import paths, spec
from alpr.metrics import DetectionTally
from alpr.synth.plates import PLATE_HEIGHT_MM, PLATE_WIDTH_MM, random_plate
from alpr.synth.scenes import paste_plate

CC0_SET = "cc0-car-plates"
CCBY_SET = "ccby-openimages-plates"
SPLITS = ("train", "validation", "test")
# The CC BY set's own folders, by the split they serve here.
CCBY_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
PLATE_CLASS = 0
# The CC0 photos CarsN whose N % 10 is this serve as validation and test.
CC0_VALIDATION_REMAINDER = 5
CC0_TEST_REMAINDER = 0

# A box finds a real plate when its centre lies inside the plate's box or their IoU reaches this, as users count.
FOUND_IOU = 0.3
# The camera-size layouts of ``samples``: the photos as they are, each enlarged to a 1280 px photo, four to a
# 1920x1080 frame.
LAYOUTS = ("photos", "1280", "1080p")
# Those whose images are larger than the detector's canvas, and so get tiles.
CAMERA_LAYOUTS = ("1280", "1080p")
ENLARGED_SIDE = 1280
FRAME_SIZE = (1080, 1920)  # height, width
FRAME_GRID = 2  # photos per frame side
# Boxes whose width / height admits a pasted type-1 plate (4.64) without gross distortion.
PASTE_ASPECTS = (2.8, 7.0)


@dataclass(frozen=True)
class RealPhoto:
    """One labelled photo: its file, its plate boxes ``[N, 4]`` (x1, y1, x2, y2 pixels) and its set."""

    path: Path
    boxes: np.ndarray
    source: str


def realtrain_dir() -> Path:
    """The shared folder of real labelled photos (may be absent)."""
    return paths.shared_dir() / "realtrain"


def _cc0_number(stem: str) -> int:
    """N of a CC0 photo ``CarsN``."""
    return int(re.sub(r"\D", "", stem) or 0)


def _cc0_split(stem: str) -> str:
    number = _cc0_number(stem)
    if number % 10 == CC0_TEST_REMAINDER:
        return "test"
    return "validation" if number % 10 == CC0_VALIDATION_REMAINDER else "train"


def _cc0_photos(root: Path, split: str) -> list[RealPhoto]:
    photos = []
    for annotation in sorted((root / "annotations").glob("*.xml"), key=lambda p: _cc0_number(p.stem)):
        if _cc0_split(annotation.stem) != split:
            continue
        tree = ElementTree.parse(annotation).getroot()
        boxes = [  # every VOC object has its bndbox fields (a missing one fails in float(), as before)
            [float(cast(str, obj.findtext(f"bndbox/{key}"))) for key in ("xmin", "ymin", "xmax", "ymax")]
            for obj in tree.iter("object")
        ]
        image = root / "images" / f"{annotation.stem}.jpg"
        if image.exists():
            photos.append(RealPhoto(image, np.array(boxes, np.float64).reshape(-1, 4), CC0_SET))
    return photos


def _ccby_photos(root: Path, split: str) -> list[RealPhoto]:
    folder = root / CCBY_FOLDERS[split]
    photos = []
    for image in sorted((folder / "images").glob("*.jpg")):
        label = folder / "labels" / f"{image.stem}.txt"
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.exists() else []
        height, width = read_photo(image).shape[:2]
        boxes = [
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            for cls, cx, cy, w, h in ((int(r[0]), *map(float, r[1:5])) for r in rows)
            if cls == PLATE_CLASS
        ]
        photos.append(RealPhoto(image, np.array(boxes, np.float64).reshape(-1, 4), CCBY_SET))
    return photos


def real_photos(split: str, root: Path | None = None) -> list[RealPhoto]:
    """The labelled photos of ``split`` (``train``, ``validation`` or ``test``); empty when the folder is absent."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    root = realtrain_dir() if root is None else root
    photos = []
    if (root / CC0_SET).is_dir():
        photos += _cc0_photos(root / CC0_SET, split)
    if (root / CCBY_SET).is_dir():
        photos += _ccby_photos(root / CCBY_SET, split)
    return photos


def samples(split: str, layout: str = "photos") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The photos of ``split`` as ``(BGR image, plate boxes [N, 4])`` in one of the ``LAYOUTS`` (module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    photos = real_photos(split)
    if layout == "photos":
        for photo in photos:
            yield read_photo(photo.path), photo.boxes
    elif layout == "1280":
        for photo in photos:
            image = read_photo(photo.path)
            scale = ENLARGED_SIDE / max(image.shape[:2])
            yield _enlarged(image, scale), photo.boxes * scale
    else:
        per_frame = FRAME_GRID * FRAME_GRID
        for first in range(0, len(photos), per_frame):
            yield _frame(photos[first : first + per_frame])


def _enlarged(image: np.ndarray, scale: float) -> np.ndarray:
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def _frame(photos: list[RealPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``FRAME_GRID`` squared photos in one ``FRAME_SIZE`` frame, each enlarged to fill its cell and centred
    in it (the rest grey, like a letterbox), with all their plate boxes."""
    frame = np.full((*FRAME_SIZE, 3), spec.LETTERBOX_FILL, np.uint8)
    cell_height, cell_width = FRAME_SIZE[0] // FRAME_GRID, FRAME_SIZE[1] // FRAME_GRID
    boxes = [np.zeros((0, 4))]
    for index, photo in enumerate(photos):
        image = read_photo(photo.path)
        scale = min(cell_width / image.shape[1], cell_height / image.shape[0])
        image = _enlarged(image, scale)[:cell_height, :cell_width]
        top = (index // FRAME_GRID) * cell_height + (cell_height - image.shape[0]) // 2
        left = (index % FRAME_GRID) * cell_width + (cell_width - image.shape[1]) // 2
        frame[top : top + image.shape[0], left : left + image.shape[1]] = image
        boxes.append(photo.boxes * scale + [left, top, left, top])
    return frame, np.concatenate(boxes)


def found_tally() -> DetectionTally:
    """A detection tally with the real-photo criterion (centre inside, or IoU at least ``FOUND_IOU``)."""
    return DetectionTally(iou_threshold=FOUND_IOU, centre_counts=True)


@cache
def read_photo(path: Path) -> np.ndarray:
    """The BGR pixels of a photo, decoded once per process (a training worker keeps the few hundred it draws); shared
    between callers, so never modified in place."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {path}")
    return image


def paste_russian_plates(rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A copy of ``image`` in which rendered Russian type-1 plates cover the boxed plates that admit one.

    The plate fills the box's width and is centred on it, its height that of a type-1 plate of that width (boxes
    taller than that keep the original plate's rim around it, a plate holder), its corners jittered a little. Its
    brightness follows the original plate's, and it is blurred to the photo's sharpness at that size.
    """
    image = image.copy()
    for x1, y1, x2, y2 in boxes:
        width, height = x2 - x1, y2 - y1
        if height < 4 or not PASTE_ASPECTS[0] <= width / height <= PASTE_ASPECTS[1]:
            continue
        plate_height = min(height, width * PLATE_HEIGHT_MM / PLATE_WIDTH_MM)
        top = (y1 + y2) / 2 - plate_height / 2
        quad = np.array([[x1, top], [x2, top], [x2, top + plate_height], [x1, top + plate_height]], np.float32)
        quad += rng.normal(0, 0.02 * plate_height, quad.shape).astype(np.float32)
        plate, _ = random_plate(rng)
        region = image[max(int(y1), 0) : max(int(y2), 1), max(int(x1), 0) : max(int(x2), 1)]
        if region.size:
            brightness = float(np.percentile(region, 90)) / max(float(np.percentile(plate, 90)), 1.0)
            plate = np.clip(plate.astype(np.float32) * min(max(brightness, 0.35), 1.3), 0, 255).astype(np.uint8)
        paste_plate(image, plate, quad, blur_sigma=float(rng.uniform(0.0, 0.8)))
    return image


def camera_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Colour, blur, noise and JPEG changes of a real camera, mild enough to keep plates legible."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= rng.uniform(0.5, 1.4)
    hsv[..., 2] *= rng.uniform(0.55, 1.35)
    image = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2))
    if rng.random() < 0.3:
        noise = rng.normal(0, rng.uniform(2, 7), image.shape).astype(np.float32)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return image
