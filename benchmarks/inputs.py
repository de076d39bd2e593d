"""Benchmark inputs: folders of images and the ``--input-data`` JSON that perf_analyzer sends from them.

Images are synthetic street scenes from ``alpr.synth.scenes.make_scene`` (written as lossless PNG, seeded, so every
run sends the same pixels), plus the real photos of the shared data folder when it is present. The ensemble input is
``image`` UINT8 ``[H, W, 3]`` with ``max_batch_size: 0``, so every JSON entry carries its own ``shape`` and the raw
BGR bytes in base64; perf_analyzer sends the entries round-robin.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from alpr import spec
from alpr.paths import shared_dir
from alpr.synth.scenes import make_scene

INPUT_NAME = spec.IMAGE_INPUT
ENCODED_INPUT_NAME = spec.ENCODED_INPUT
# What a camera's JPEG encoder typically uses.
JPEG_QUALITY = 90
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
REAL_SUFFIXES = (".jpg", ".jpeg")

# (height, width) of the mixed set and of the image-size sweep.
MIXED_SIZES: tuple[tuple[int, int], ...] = ((480, 640), (720, 1280), (1080, 1920))
SCALING_SIZES: tuple[tuple[int, int], ...] = (*MIXED_SIZES, (2160, 3840))
# Plates drawn per image: the mixed set cycles through 0-4, the plate sweep takes these.
MIXED_PLATE_COUNTS = (0, 1, 2, 3, 4)
SCALING_PLATE_COUNTS = (0, 1, 4, spec.MAX_PLATES)


@dataclass(frozen=True)
class BenchImage:
    """One request's image (BGR uint8 ``[H, W, 3]``) and where it came from."""

    name: str
    image: np.ndarray

    @property
    def size_label(self) -> str:
        height, width = self.image.shape[:2]
        return f"{width}x{height}"


@dataclass(frozen=True)
class SceneRequest:
    """A synthetic scene to draw: its size and how many plates to place."""

    height: int
    width: int
    plates: int

    @property
    def stem(self) -> str:
        return f"scene_{self.width}x{self.height}_{self.plates}plates"


def mixed_scenes(per_size: int) -> list[SceneRequest]:
    """``per_size`` scenes at each of ``MIXED_SIZES``, their plate counts cycling through ``MIXED_PLATE_COUNTS``."""
    scenes = []
    for size_index, (height, width) in enumerate(MIXED_SIZES):
        for image_index in range(per_size):
            plates = MIXED_PLATE_COUNTS[(size_index + image_index) % len(MIXED_PLATE_COUNTS)]
            scenes.append(SceneRequest(height, width, plates))
    return scenes


SCENE_LABELS = "labels.json"


def write_scenes(scenes: Iterable[SceneRequest], folder: Path, *, seed: int) -> Path:
    """Draw ``scenes`` into ``folder`` (emptied first) as ``<index>_<stem>.png``, their plates (text and box) in
    ``labels.json``; returns the folder."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    labels = {}
    for index, scene in enumerate(scenes):
        drawn = make_scene(rng, scene.height, scene.width, scene.plates)
        name = f"{index:03d}_{scene.stem}.png"
        if not cv2.imwrite(str(folder / name), drawn.image):
            raise OSError(f"could not write {folder / name}")
        labels[name] = [{"text": plate.text, "box_xyxy": list(map(float, plate.box_xyxy))} for plate in drawn.plates]
    (folder / SCENE_LABELS).write_text(json.dumps(labels, indent=1))
    return folder


def plate_labels(*folders: Path) -> dict[str, list[tuple[str, list[float]]]]:
    """The labelled plates (text, box) of each image file name, from the ``labels.json`` of ``folders`` (the scenes'
    and the real photos' own, which lists each photo's readable plates)."""
    labels: dict[str, list[tuple[str, list[float]]]] = {}
    for folder in folders:
        path = folder / SCENE_LABELS
        if not path.is_file():
            continue
        for name, entry in json.loads(path.read_text()).items():
            plates = entry["plates"] if isinstance(entry, dict) else entry
            labels[name] = [(plate["text"], plate["box_xyxy"]) for plate in plates]
    return labels


def real_photos() -> list[Path]:
    """The real photos of the shared data folder (``real/*.jpg|jpeg``); empty when the folder is absent."""
    folder = shared_dir() / "real"
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in REAL_SUFFIXES)


def read_images(paths: Iterable[Path]) -> list[BenchImage]:
    """The images at ``paths`` as the service receives them (BGR, as ``cv2.imread`` returns them)."""
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {path}")
        images.append(BenchImage(path.name, image))
    return images


def folder_images(folder: Path) -> list[Path]:
    """The image files of ``folder``, sorted by name."""
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def write_input_data(images: Sequence[BenchImage], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON: one entry per image with its own shape and base64 bytes."""
    if not images:
        raise ValueError("no images for the input data")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as data:
        # Written entry by entry: a 4K frame is 33 MB of base64, and the whole list need not sit in memory twice.
        data.write('{"data": [')
        for index, item in enumerate(images):
            entry = {
                INPUT_NAME: {
                    "b64": base64.b64encode(np.ascontiguousarray(item.image).tobytes()).decode("ascii"),
                    "shape": list(item.image.shape),
                }
            }
            data.write(("," if index else "") + json.dumps(entry))
        data.write("]}")
    return path


def encoded_files(images: Sequence[BenchImage], real: Sequence[Path], quality: int = JPEG_QUALITY) -> list[bytes]:
    """The image files a camera would send for ``images``: a real photo's own file, else the image as a JPEG."""
    originals = {path.name: path for path in real}
    files = []
    for item in images:
        if item.name in originals:
            files.append(originals[item.name].read_bytes())
            continue
        ok, data = cv2.imencode(".jpg", item.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise OSError(f"cannot encode {item.name} as JPEG")
        files.append(data.tobytes())
    return files


def write_encoded_input_data(files: Sequence[bytes], path: Path) -> Path:
    """perf_analyzer ``--input-data`` JSON for the encoded ensemble: one BYTES element per entry, each file's bytes.

    perf_analyzer sends base64 content as the tensor's raw bytes, which for BYTES is each element's 4-byte
    little-endian length followed by the element.
    """
    if not files:
        raise ValueError("no files for the input data")
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [
        {
            ENCODED_INPUT_NAME: {
                "b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode("ascii"),
                "shape": [1],
            }
        }
        for data in files
    ]
    path.write_text(json.dumps({"data": entries}))
    return path


def read_input_data(path: Path) -> list[np.ndarray]:
    """The images of an ``--input-data`` JSON written by ``write_input_data``."""
    entries = json.loads(path.read_text())["data"]
    return [
        np.frombuffer(base64.b64decode(entry[INPUT_NAME]["b64"]), np.uint8).reshape(entry[INPUT_NAME]["shape"])
        for entry in entries
    ]
