"""``lpr``: recognise the plates in images and videos through a running server, one JSON line per image or frame.

    lpr car.jpg photos/ 'shots/**/*.png' dashcam.mp4 --video-stride 10 --concurrency 8 --annotate-dir out/

Image files are sent as they are, to ``plate_recognition_encoded``, which decodes them in the server (a JPEG is 10-30
times smaller than its pixels); ``--send pixels`` decodes them here and sends the pixels to ``plate_recognition``,
as for video frames and shared memory.

Each line on stdout is ``{"source": ..., ["frame": ...,] "plates": [{"box", "det_score", "text", "text_score"}]}``
(or ``"error"`` instead of ``"plates"``), in input order; a progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from alpr import spec
from alpr.client import DEFAULT_URL, SHARED_MEMORY_KINDS, AsyncPlateRecogniser, Plate, SharedMemoryError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
BOX_COLOUR = (0, 255, 0)  # BGR


@dataclass
class Item:
    """One image to recognise: a picture file or one frame of a video."""

    source: str
    frame: int | None
    image: np.ndarray | None
    error: str | None = None
    # The encoded file, when it is sent as it is (the server decodes it).
    data: bytes | None = None


def expand_sources(arguments: list[str]) -> list[Path]:
    """Files named, images and videos inside named folders (recursively), and glob matches, in order, once each."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES))
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{argument}: no such file, folder or matching glob")
            found.extend(matches)
    return list(dict.fromkeys(found))


def read_items(sources: list[Path], video_stride: int, send_files: bool = False, decode: bool = True) -> Iterator[Item]:
    """Read the sources lazily: every image file, and every ``video_stride``-th frame of every video.

    With ``send_files`` an image file's bytes go to the server as they are, and it is decoded here only when
    ``decode`` (to draw on it).
    """
    for path in sources:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path, video_stride)
            continue
        if send_files:
            try:
                data = path.read_bytes()
            except OSError as error:
                yield Item(str(path), None, None, f"cannot read the file: {error}")
                continue
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if decode and data else None
            yield Item(str(path), None, image, None, data)
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        yield Item(str(path), None, image, None if image is not None else "cannot decode the image")


def _video_frames(path: Path, stride: int) -> Iterator[Item]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        yield Item(str(path), None, None, "cannot open the video")
        return
    try:
        index = 0
        while True:
            if index % stride == 0:
                ok, frame = capture.read()
                if not ok:
                    return
                yield Item(str(path), index, frame)
            elif not capture.grab():
                return
            index += 1
    finally:
        capture.release()


def annotate(image: np.ndarray, plates: list[Plate]) -> np.ndarray:
    """A copy of ``image`` with each plate's box and text drawn on it."""
    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 640))
    for plate in plates:
        x1, y1, x2, y2 = (round(v) for v in plate.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        label = f"{plate.text} {plate.text_score:.2f}"
        origin = (x1, max(y1 - 4, 12))
        cv2.putText(canvas, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thickness, BOX_COLOUR, thickness)
    return canvas


def annotation_path(directory: Path, item: Item) -> Path:
    """Where the annotated copy of ``item`` goes: ``<stem>.jpg`` or ``<stem>_<frame>.jpg`` for a video frame."""
    stem = Path(item.source).stem
    name = f"{stem}.jpg" if item.frame is None else f"{stem}_{item.frame:06d}.jpg"
    return directory / name


async def _recognise(recogniser: AsyncPlateRecogniser, item: Item) -> list[Plate]:
    if item.data is not None:
        return await recogniser.recognise_file(item.data)
    assert item.image is not None
    return await recogniser.recognise(item.image)


def _record(item: Item, plates: list[Plate] | None, error: str | None) -> dict:
    record: dict = {"source": item.source}
    if item.frame is not None:
        record["frame"] = item.frame
    if error is not None:
        record["error"] = error
    else:
        record["plates"] = [plate.to_dict() for plate in plates or []]
    return record


async def run(args: argparse.Namespace) -> int:
    """Recognise every item with at most ``args.concurrency`` requests in flight; returns the exit status."""
    sources = expand_sources(args.images)
    if args.annotate_dir is not None:
        args.annotate_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    in_flight: deque[tuple[Item, asyncio.Task | None]] = deque()
    progress = tqdm(desc="lpr", unit="img", file=sys.stderr, disable=args.quiet)

    async def finish_oldest() -> None:
        nonlocal failures
        item, task = in_flight.popleft()
        plates, error = None, item.error
        if task is not None:
            try:
                plates = [plate for plate in await task if plate.text_score >= args.min_text_score]
            except Exception as exc:  # the server's or the client's message goes into the JSON line
                error = str(exc)
        if error is not None:
            failures += 1
        print(json.dumps(_record(item, plates, error)), flush=True)
        if plates is not None and args.annotate_dir is not None and item.image is not None:
            cv2.imwrite(str(annotation_path(args.annotate_dir, item)), annotate(item.image, plates))
        progress.update()

    send_files = args.send == "file" and args.shared_memory == "none"
    async with AsyncPlateRecogniser(
        args.url,
        model=args.model,
        encoded_model=args.encoded_model,
        retries=args.retries,
        convert=True,
        shared_memory=args.shared_memory,
        priority=args.priority,
    ) as recogniser:
        items = read_items(sources, args.video_stride, send_files, decode=args.annotate_dir is not None)
        while True:
            # Decoding runs in a worker thread so requests already sent keep flowing meanwhile.
            item = await asyncio.to_thread(next, items, None)
            if item is None:
                break
            task = asyncio.create_task(_recognise(recogniser, item)) if item.error is None else None
            in_flight.append((item, task))
            if len(in_flight) >= args.concurrency:
                await finish_oldest()
        while in_flight:
            await finish_oldest()
    progress.close()
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpr", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image or video files, folders, or globs (quote them)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address of the server (default {DEFAULT_URL})")
    parser.add_argument("--model", default=spec.ENSEMBLE_NAME, help="ensemble to call with pixels")
    parser.add_argument("--encoded-model", default=spec.ENCODED_ENSEMBLE_NAME, help="ensemble to call with image files")
    parser.add_argument(
        "--send",
        choices=("file", "pixels"),
        default="file",
        help="image files: send the file for the server to decode (default), or decode here and send the pixels",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--retries", type=int, default=3, help="resend requests the server refused for overload")
    parser.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY_KINDS,
        default="none",
        help="send images through system or CUDA shared memory (only with a server on this host; default none)",
    )
    parser.add_argument(
        "--priority",
        choices=sorted(spec.PRIORITIES),
        default="live",
        help="live (default) is served ahead of backfill: send archive jobs as backfill",
    )
    parser.add_argument("--video-stride", type=int, default=1, help="recognise every S-th frame of videos")
    parser.add_argument(
        "--min-text-score",
        type=float,
        default=0.0,
        help="leave out plates read with a lower text score (0..1; docs/ACCURACY.md lists what each floor keeps)",
    )
    parser.add_argument("--annotate-dir", type=Path, help="write copies with boxes and texts drawn here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1 or args.video_stride < 1:
        print("lpr: --concurrency and --video-stride must be at least 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.min_text_score <= 1.0:
        print("lpr: --min-text-score must lie in [0, 1]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except (FileNotFoundError, SharedMemoryError) as error:
        print(f"lpr: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of stdout went away (lpr ... | head)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at interpreter exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
