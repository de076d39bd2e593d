"""Street and CCTV-like scenes with Russian plates for training the plate detector.

A scene is built in layers: a procedural background (gradients, smooth noise, asphalt grain, buildings and shapes),
distractors the detector must ignore (signs and boxes with other text, blank white rectangles, grilles), car-like
bodies with a darker bumper band, the plates themselves warped in perspective, occluders, and finally camera effects
(lighting and colour casts, shadows, Gaussian or motion blur, sensor noise, JPEG). Plates never overlap each other and
an occluder hides at most a fifth of a plate, so every label stays honest.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import cv2
import numpy as np

from alpr.synth.plates import PLATE_HEIGHT_MM, PLATE_WIDTH_MM, random_plate

# Plate widths seen in a 1920x1080 street or CCTV frame; other frames scale by their longer side.
REFERENCE_FRAME_SIDE = 1920
MIN_PLATE_WIDTH = 30.0
MAX_PLATE_WIDTH = 250.0
MAX_OCCLUDED_FRACTION = 0.2

CAR_COLOURS_BGR = (
    (235, 235, 235), (30, 30, 30), (175, 175, 170), (110, 110, 105), (40, 40, 170), (140, 70, 20),
    (60, 90, 40), (30, 160, 210), (200, 200, 190), (80, 60, 50), (20, 20, 90), (150, 150, 140),
)  # fmt: skip


@dataclass(frozen=True)
class PlateInstance:
    """One plate in a scene: its tight axis-aligned box, its quad (TL, TR, BR, BL in image pixels), its text, and
    whether something covers part of it (``MAX_OCCLUDED_FRACTION`` at most)."""

    box_xyxy: tuple[float, float, float, float]
    corners: np.ndarray
    text: str
    occluded: bool = False


class PlateSample(NamedTuple):
    """A recogniser sample: a small BGR uint8 image around one plate, its text and its quad (4x2, image pixels)."""

    image: np.ndarray
    text: str
    corners: np.ndarray


@dataclass
class Scene:
    """A BGR uint8 image and the plates drawn in it."""

    image: np.ndarray
    plates: list[PlateInstance] = field(default_factory=list)


def _uniform_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    values = rng.integers(low, high, 3)
    return int(values[0]), int(values[1]), int(values[2])


# ---------------------------------------------------------------------------------------------------------------------
# Background


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1): a coarse random grid of about ``cells`` across, bicubically upsampled."""
    grid_w = max(2, cells)
    grid_h = max(2, round(cells * height / width))
    return cv2.resize(rng.random((grid_h, grid_w), dtype=np.float32), (width, height), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedural backdrop: smooth layers at a quarter of the resolution, upsampled, then shapes on top."""
    low_h, low_w = max(8, height // 4), max(8, width // 4)
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    gradient = cv2.resize(corners, (low_w, low_h), interpolation=cv2.INTER_LINEAR)
    # Perlin-like texture: a few octaves of value noise, tinted.
    octaves = sum(
        _smooth_noise(rng, low_h, low_w, cells) * weight for cells, weight in ((4, 0.5), (12, 0.3), (40, 0.2))
    )
    tint = rng.uniform(40, 160, 3)
    weight = rng.uniform(0.3, 0.8)
    canvas = cv2.merge([gradient[..., c] * weight + octaves * tint[c] for c in range(3)])
    if rng.random() < 0.5:
        _asphalt(rng, canvas)
    canvas = cv2.resize(np.clip(canvas, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    # Objects are drawn at full resolution: their edges must be as sharp as a plate's, or sharpness gives plates away.
    if rng.random() < 0.4:
        _building(rng, canvas)
    for _ in range(int(rng.integers(3, 14))):
        _random_shape(rng, canvas)
    return canvas


def _asphalt(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A grey road band with grain and lane markings across the lower part of the frame."""
    height, width = canvas.shape[:2]
    top = int(rng.uniform(0.3, 0.8) * height)
    grain = rng.normal(rng.uniform(60, 130), rng.uniform(4, 14), (height - top, width)).astype(np.float32)
    for channel, tone in enumerate(rng.normal(0, 5, 3)):
        canvas[top:, :, channel] = grain + tone
    for _ in range(int(rng.integers(0, 4))):
        x = rng.uniform(0, width)
        slope = rng.uniform(-1.5, 1.5)
        points = np.array([[x, top], [x + slope * (height - top), height]], np.int32)
        cv2.polylines(canvas, [points], False, (225, 225, 225), max(1, int(rng.integers(1, 4))))


def _building(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A facade with a grid of windows."""
    height, width = canvas.shape[:2]
    x0, y0 = int(rng.uniform(-0.2, 0.7) * width), int(rng.uniform(-0.3, 0.4) * height)
    w, h = int(rng.uniform(0.2, 0.7) * width), int(rng.uniform(0.2, 0.6) * height)
    cv2.rectangle(canvas, (x0, y0), (x0 + w, y0 + h), _uniform_colour(rng, 60, 220), -1)
    rows, cols = int(rng.integers(2, 8)), int(rng.integers(2, 10))
    window = _uniform_colour(rng, 10, 120)
    for r in range(rows):
        for c in range(cols):
            wx, wy = x0 + (c + 0.2) * w / cols, y0 + (r + 0.2) * h / rows
            cv2.rectangle(canvas, (int(wx), int(wy)), (int(wx + 0.6 * w / cols), int(wy + 0.55 * h / rows)), window, -1)


def _random_shape(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A filled rectangle, disc or polygon, or a thick line, of a random colour."""
    height, width = canvas.shape[:2]
    colour = _uniform_colour(rng)
    centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    size = int(rng.uniform(0.03, 0.3) * max(height, width))
    kind = rng.integers(4)
    if kind == 0:
        cv2.rectangle(canvas, centre, (centre[0] + size, centre[1] + size // 2), colour, -1)
    elif kind == 1:
        cv2.circle(canvas, centre, size // 2, colour, -1)
    elif kind == 2:
        points = (np.array(centre) + rng.normal(0, size / 2, (int(rng.integers(3, 7)), 2))).astype(np.int32)
        cv2.fillPoly(canvas, [points], colour)
    else:
        end = (centre[0] + int(rng.normal(0, size)), centre[1] + int(rng.normal(0, size)))
        cv2.line(canvas, centre, end, colour, max(1, size // 20))


# ---------------------------------------------------------------------------------------------------------------------
# Distractors: things that look a bit like plates but are not.


def _random_string(rng: np.random.Generator, length: int) -> str:
    alphabet = string.ascii_uppercase + string.digits + "  -"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), length)).strip() or "STOP"


def _text_box(rng: np.random.Generator, image: np.ndarray, centre: tuple[float, float], scale: float) -> None:
    """A sign or label: a filled box with random Latin/digit text, sometimes white with dark text."""
    text = _random_string(rng, int(rng.integers(2, 14)))
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX]))
    thickness = max(1, int(scale / 12))
    font_scale = scale / 30
    (text_w, text_h), _ = cv2.getTextSize(text, font, font_scale, thickness)
    pad = int(rng.uniform(0.2, 0.8) * text_h) + 1
    lines = int(rng.integers(1, 3))
    x0, y0 = int(centre[0] - text_w / 2 - pad), int(centre[1] - text_h * lines / 2 - pad)
    x1, y1 = int(centre[0] + text_w / 2 + pad), int(centre[1] + text_h * (lines * 1.6 - 0.6) / 2 + pad)
    if rng.random() < 0.4:
        box, ink = _uniform_colour(rng, 200, 256), _uniform_colour(rng, 0, 70)
    else:
        box, ink = _uniform_colour(rng), _uniform_colour(rng)
    cv2.rectangle(image, (x0, y0), (x1, y1), box, -1)
    if rng.random() < 0.5:
        cv2.rectangle(image, (x0, y0), (x1, y1), ink, max(1, thickness))
    for line in range(lines):
        baseline = int(y0 + pad + text_h * (1 + 1.6 * line))
        cv2.putText(image, text if line == 0 else _random_string(rng, len(text)), (x0 + pad, baseline), font,
                    font_scale, ink, thickness, cv2.LINE_AA)  # fmt: skip


def _blank_rectangle(rng: np.random.Generator, image: np.ndarray, centre: tuple[float, float], scale: float) -> None:
    """A white or light rectangle with no text, of plate-like or other proportions, sometimes with a border."""
    aspect = rng.uniform(1.0, 6.0)
    w = scale * rng.uniform(1.5, 5.0)
    h = w / aspect
    corners = cv2.boxPoints(((centre[0], centre[1]), (w, h), rng.normal(0, 8)))
    cv2.fillConvexPoly(image, corners.astype(np.int32), _uniform_colour(rng, 190, 256), cv2.LINE_AA)
    if rng.random() < 0.5:
        cv2.polylines(image, [corners.astype(np.int32)], True, _uniform_colour(rng, 0, 80), max(1, int(h / 25)))


def _grille(rng: np.random.Generator, image: np.ndarray, centre: tuple[float, float], scale: float) -> None:
    """Parallel bars: radiator grilles, fences, blinds."""
    w, h = scale * rng.uniform(2, 7), scale * rng.uniform(0.5, 2.5)
    x0, y0 = centre[0] - w / 2, centre[1] - h / 2
    horizontal = rng.random() < 0.6
    bars = int(rng.integers(3, 12))
    bar, gap = _uniform_colour(rng, 0, 256), _uniform_colour(rng, 0, 90)
    cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), gap, -1)
    for i in range(bars):
        t0, t1 = i / bars, (i + rng.uniform(0.3, 0.7)) / bars
        if horizontal:
            cv2.rectangle(image, (int(x0), int(y0 + t0 * h)), (int(x0 + w), int(y0 + t1 * h)), bar, -1)
        else:
            cv2.rectangle(image, (int(x0 + t0 * w), int(y0)), (int(x0 + t1 * w), int(y0 + h)), bar, -1)


def _round_sign(rng: np.random.Generator, image: np.ndarray, centre: tuple[float, float], scale: float) -> None:
    """A road sign: a red ring or a blue disc with a number or a letter."""
    radius = max(3, int(scale * rng.uniform(0.5, 1.5)))
    c = (int(centre[0]), int(centre[1]))
    if rng.random() < 0.5:
        cv2.circle(image, c, radius, (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(image, c, radius, (40, 40, 200), max(1, radius // 5), cv2.LINE_AA)
        ink = (20, 20, 20)
    else:
        cv2.circle(image, c, radius, (170, 90, 20), -1, cv2.LINE_AA)
        ink = (245, 245, 245)
    label = str(int(rng.integers(1, 100))) if rng.random() < 0.6 else "P"
    font_scale = radius / 30
    (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, radius // 10))
    cv2.putText(image, label, (c[0] - tw // 2, c[1] + th // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink,
                max(1, radius // 10), cv2.LINE_AA)  # fmt: skip


DISTRACTORS = (_text_box, _blank_rectangle, _grille, _round_sign)
MAX_DISTRACTORS = 6


# ---------------------------------------------------------------------------------------------------------------------
# Plates, their cars and their perspective


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix (radians) turning the plate about its vertical, horizontal and viewing axes."""
    cy, sy, cp, sp, cr, sr = (
        math.cos(yaw),
        math.sin(yaw),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(roll),
        math.sin(roll),
    )
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    about_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


def plate_quad(rng: np.random.Generator, plate_width: float, tilt: float = 1.0) -> np.ndarray:
    """Corners (TL, TR, BR, BL) of a plate seen by a pinhole camera, centred at the origin, ``plate_width`` wide.

    Yaw (turned cars), pitch (cameras above the road) and roll, all scaled by ``tilt`` (0: square-on), with a camera
    distance of a few plate widths so that perspective shows on near plates.
    """
    yaw = math.radians(tilt * float(np.clip(rng.normal(0, 15), -45, 45)))
    pitch = math.radians(tilt * float(rng.uniform(-5, 30)))
    roll = math.radians(tilt * float(np.clip(rng.normal(0, 4), -12, 12)))
    half_w, half_h = PLATE_WIDTH_MM / 2, PLATE_HEIGHT_MM / 2
    flat = np.array([[-half_w, -half_h, 0], [half_w, -half_h, 0], [half_w, half_h, 0], [-half_w, half_h, 0]])
    turned = flat @ _rotation(yaw, pitch, roll).T
    distance = PLATE_WIDTH_MM * rng.uniform(2.5, 12.0)
    projected = turned[:, :2] * distance / (distance + turned[:, 2:3])
    # Scale so that the plate's frontal width (as if seen square-on) is plate_width pixels.
    return (projected * (plate_width / PLATE_WIDTH_MM)).astype(np.float32)


def _sample_plate_width(rng: np.random.Generator, frame_scale: float) -> float:
    """Log-uniform plate width: small plates common (a third under 60 px at 1080p) but not dominant."""
    return float(np.exp(rng.uniform(math.log(MIN_PLATE_WIDTH), math.log(MAX_PLATE_WIDTH)))) * frame_scale


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _draw_car(rng: np.random.Generator, image: np.ndarray, quad: np.ndarray) -> None:
    """A car-like body around the plate: a shaded coloured mass, a darker bumper band, lights and a grille."""
    centre = quad.mean(axis=0)
    plate_w = float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3])) / 2
    plate_h = float(np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2
    car_w = max(plate_w, 1.0) * rng.uniform(3.0, 4.6)
    car_h = car_w * rng.uniform(0.45, 0.85)
    left = centre[0] - car_w / 2 + rng.normal(0, 0.05) * car_w
    top = centre[1] - car_h * rng.uniform(0.55, 0.8)
    shade = np.array(CAR_COLOURS_BGR[rng.integers(len(CAR_COLOURS_BGR))], np.float32) * rng.uniform(0.7, 1.15)
    colour = tuple(float(v) for v in np.clip(shade, 0, 255))
    slant = car_w * rng.uniform(0.05, 0.15)
    body = np.array(
        [[left + slant, top], [left + car_w - slant, top], [left + car_w, top + car_h], [left, top + car_h]], np.int32
    )
    cv2.fillConvexPoly(image, body, colour, cv2.LINE_AA)
    # Windscreen above the bonnet.
    glass_h = car_h * rng.uniform(0.15, 0.35)
    glass = np.array(
        [[left + 2 * slant, top - glass_h], [left + car_w - 2 * slant, top - glass_h],
         [left + car_w - slant, top], [left + slant, top]], np.int32,
    )  # fmt: skip
    cv2.fillConvexPoly(image, glass, _uniform_colour(rng, 20, 110), cv2.LINE_AA)
    # Headlights on either side of the plate.
    light = _uniform_colour(rng, 150, 256)
    for side in (-1, 1):
        lx = centre[0] + side * car_w * rng.uniform(0.3, 0.4)
        ly = centre[1] - plate_h * rng.uniform(1.5, 3.0)
        axes = (max(1, int(car_w * 0.08)), max(1, int(plate_h * 0.6)))
        cv2.ellipse(image, (int(lx), int(ly)), axes, 0, 0, 360, light, -1, cv2.LINE_AA)
    if rng.random() < 0.6:
        _grille(rng, image, (float(centre[0]), float(centre[1] - plate_h * rng.uniform(1.8, 3.0))), plate_h * 1.2)
    # Bumper: a darker band the plate is mounted on.
    band_h = plate_h * rng.uniform(1.6, 2.8)
    band = tuple(v * rng.uniform(0.3, 0.75) for v in colour)
    y0 = centre[1] - band_h * rng.uniform(0.4, 0.6)
    cv2.rectangle(image, (int(left), int(y0)), (int(left + car_w), int(y0 + band_h)), band, -1)


def paste_plate(image: np.ndarray, plate: np.ndarray, quad: np.ndarray, blur_sigma: float) -> None:
    """Warp the upright plate image onto ``quad`` (image pixels), blending its anti-aliased edges."""
    height, width = image.shape[:2]
    x0, y0 = np.floor(quad.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return
    # Shrink the plate first (area averaging) so that the warp below never decimates: no aliasing on small plates.
    target_w = float(np.linalg.norm(quad[1] - quad[0]))
    shrink = min(1.0, 1.5 * max(target_w, 4.0) / plate.shape[1])
    if shrink < 1.0:
        plate = cv2.resize(plate, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    if blur_sigma > 0:  # given in image pixels; the plate is now about 1.5 image pixels per its pixel
        plate = cv2.GaussianBlur(plate, (0, 0), blur_sigma * plate.shape[1] / max(target_w, 1.0))
    h, w = plate.shape[:2]
    # Corners are pixel edges (a box [0, W] spans a whole image) while OpenCV warps address pixel centres.
    source = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32) - 0.5
    # The cast: NumPy's stubs type an untyped ndarray minus a float32 array as Never, and then minus 0.5 as float.
    homography = cv2.getPerspectiveTransform(source, cast(np.ndarray, quad - np.array([x0, y0], np.float32) - 0.5))
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpPerspective(plate, homography, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), homography, size, flags=cv2.INTER_LINEAR)
    alpha = mask.astype(np.float32) / 255.0
    roi = image[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(warped, roi, alpha, 1.0 - alpha)


def _occlude(
    rng: np.random.Generator, image: np.ndarray, quad: np.ndarray, keep_clear: Sequence[tuple[float, ...]]
) -> bool:
    """Hide a strip of at most ``MAX_OCCLUDED_FRACTION`` of the plate, entering from one side (poles, people, cars).

    Nothing is drawn (and False returned) if the occluder would reach into one of the ``keep_clear`` boxes (the other
    plates).
    """
    fraction = rng.uniform(0.05, MAX_OCCLUDED_FRACTION)
    reach = rng.uniform(0.5, 3.0)  # how far the occluder extends beyond the plate, in plate sizes
    # Occluder in the plate's own unit square (u to the right, v down), mapped to the image by the plate's homography.
    side = rng.integers(4)
    if side == 0:
        u0, u1, v0, v1 = -reach, fraction, -reach, 1 + reach
    elif side == 1:
        u0, u1, v0, v1 = 1 - fraction, 1 + reach, -reach, 1 + reach
    elif side == 2:
        u0, u1, v0, v1 = -reach, 1 + reach, 1 - fraction, 1 + reach
    else:
        u0, u1, v0, v1 = -reach, 1 + reach, -reach, fraction
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    homography = cv2.getPerspectiveTransform(unit, quad)
    occluder = np.array([[[u0, v0], [u1, v0], [u1, v1], [u0, v1]]], np.float32)
    points = cv2.perspectiveTransform(occluder, homography)[0]
    extent = (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())
    if any(_boxes_overlap(extent, box, margin=1.0) for box in keep_clear):
        return False
    cv2.fillConvexPoly(image, points.round().astype(np.int32), _uniform_colour(rng), cv2.LINE_AA)
    return True


def _draw_plate_holder(rng: np.random.Generator, image: np.ndarray, quad: np.ndarray) -> None:
    """A dark or chrome frame slightly larger than the plate."""
    centre = quad.mean(axis=0)
    # Grow along the plate's own axes, vertically more: a holder has a wider rim above and below the plate.
    half_u = (quad[1] - quad[0] + quad[2] - quad[3]) / 4 * rng.uniform(1.02, 1.05)
    half_v = (quad[3] - quad[0] + quad[2] - quad[1]) / 4 * rng.uniform(1.08, 1.25)
    holder = np.array(
        [centre - half_u - half_v, centre + half_u - half_v, centre + half_u + half_v, centre - half_u + half_v]
    )
    colour = _uniform_colour(rng, 10, 60) if rng.random() < 0.8 else _uniform_colour(rng, 150, 220)
    cv2.fillConvexPoly(image, holder.round().astype(np.int32), colour, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------------------------------
# Camera


def _tiled_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Gaussian sensor noise (int16) from one random 256x256 tile, repeated: sampling every pixel of a frame is slow."""
    tile = (rng.standard_normal((256, 256, 3), dtype=np.float32) * sigma).astype(np.int16)
    reps = (height // 256 + 1, width // 256 + 1, 1)
    return np.tile(tile, reps)[:height, :width]


def _motion_kernel(rng: np.random.Generator, length: int) -> np.ndarray:
    kernel: np.ndarray = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return kernel / max(float(kernel.sum()), 1e-6)


LIGHT_UNIT = 128.0  # a light field stored as uint8: 128 leaves a pixel unchanged


def _lighting(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-resolution multiplicative light field: a colour cast, a brightness gradient and soft shadows."""
    low_h, low_w = max(4, height // 16), max(4, width // 16)
    corners = rng.uniform(0.55, 1.25, (2, 2, 1)).astype(np.float32)
    light = cv2.resize(corners, (low_w, low_h), interpolation=cv2.INTER_LINEAR)[..., None]
    light = light * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # colour cast (sodium lamps, dusk, white balance)
    light = light * rng.uniform(0.5, 1.2)
    for _ in range(int(rng.integers(0, 3))):
        shadow = np.zeros((low_h, low_w), np.float32)
        points = (rng.random((int(rng.integers(3, 7)), 2)) * [low_w, low_h]).astype(np.int32)
        cv2.fillPoly(shadow, [points], 1.0)  # type: ignore[call-overload]  # a scalar colour; stubs: Sequence[float]
        light *= (1.0 - rng.uniform(0.2, 0.55) * shadow)[..., None]
    return cv2.GaussianBlur(light, (0, 0), rng.uniform(0.7, 2.0))


def _camera(rng: np.random.Generator, image: np.ndarray, max_motion: int = 8) -> np.ndarray:
    """Lighting, blur, noise and JPEG compression of the whole frame, in uint8 OpenCV calls (fast on big frames)."""
    height, width = image.shape[:2]
    light: np.ndarray = np.clip(_lighting(rng, height, width) * LIGHT_UNIT, 0, 255).astype(np.uint8)
    light = cv2.resize(light, (width, height), interpolation=cv2.INTER_LINEAR)
    image = cv2.multiply(image, light, scale=1.0 / LIGHT_UNIT)
    if rng.random() < 0.3:
        gamma = rng.uniform(0.7, 1.4)
        image = cv2.LUT(image, (255.0 * (np.arange(256) / 255.0) ** gamma).round().astype(np.uint8))
    blur = rng.random()
    if blur < 0.35:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.3))
    elif blur < 0.5:
        image = cv2.filter2D(image, -1, _motion_kernel(rng, int(rng.integers(3, max(3, max_motion) + 1))))
    if rng.random() < 0.6:
        image = cv2.add(image, _tiled_noise(rng, height, width, rng.uniform(2, 9)), dtype=cv2.CV_8U)
    if rng.random() < 0.85:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return image


# ---------------------------------------------------------------------------------------------------------------------


def frame_scale(height: int, width: int) -> float:
    """How much larger plates are in this frame than in a 1920x1080 one (by the longer side)."""
    return max(height, width) / REFERENCE_FRAME_SIDE


def make_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_plates: int,
    max_distractors: int = MAX_DISTRACTORS,
    camera: bool = True,
) -> Scene:
    """A street-like BGR frame of ``height`` x ``width`` with up to ``num_plates`` non-overlapping plates.

    Fewer plates are placed only when the frame has no room left for another one without overlap. It shows 1 to
    ``max_distractors`` plate-like things that are not plates (the held-out set uses the default). ``camera=False``
    leaves out the camera's lighting, blur, noise and JPEG compression, which come last: the same scene, as the
    camera would have seen it with perfect optics and no compression.
    """
    scale = frame_scale(height, width)
    image = _background(rng, height, width)
    mean_plate_width = math.sqrt(MIN_PLATE_WIDTH * MAX_PLATE_WIDTH) * scale
    for _ in range(int(rng.integers(1, max_distractors + 1))):
        distractor = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        distractor(rng, image, centre, mean_plate_width * rng.uniform(0.15, 0.6))

    # Place every plate first (non-overlapping boxes), then draw all cars, then all plates on top of them.
    quads: list[np.ndarray] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(num_plates):
        for _attempt in range(30):
            quad = plate_quad(rng, _sample_plate_width(rng, scale))
            extent = quad.max(axis=0) - quad.min(axis=0)
            if extent[0] >= width - 2 or extent[1] >= height - 2:
                continue
            offset = rng.uniform(-quad.min(axis=0) + 1, np.array([width, height]) - quad.max(axis=0) - 1)
            quad = (quad + offset).astype(np.float32)
            box = (*quad.min(axis=0).tolist(), *quad.max(axis=0).tolist())
            # Apart by a third of a plate's height, so that no plate holder reaches a neighbouring plate.
            margin = 0.35 * max([box[3] - box[1], *(other[3] - other[1] for other in boxes)]) + 2.0
            if not any(_boxes_overlap(box, other, margin) for other in boxes):
                quads.append(quad)
                boxes.append(box)
                break
    for quad in sorted(quads, key=lambda q: float(q[:, 0].max() - q[:, 0].min())):  # far (small) cars first
        _draw_car(rng, image, quad)
    if not quads and rng.random() < 0.3:  # an empty scene may still show a car whose plate is not visible
        _draw_car(rng, image, plate_quad(rng, mean_plate_width) + np.array([width / 2, height * 0.7], np.float32))

    plates = [
        PlateInstance(box, quad, *_draw_plate(rng, image, quad, boxes[:i] + boxes[i + 1 :]))
        for i, (quad, box) in enumerate(zip(quads, boxes, strict=True))
    ]
    return Scene(_camera(rng, image) if camera else image, plates)


def make_plate_patch(
    rng: np.random.Generator, plate_width: float, margin: float = 0.25, tilt: float = 1.0
) -> PlateSample:
    """A small picture of one plate on its car, for recogniser training, with the plate's quad in patch pixels.

    The patch is the plate's box grown by ``margin`` of the box width on every side (room for the serving crop's extra
    height and for box jitter), with the perspective (scaled by ``tilt``, see ``plate_quad``), occlusion and camera
    effects of the scenes.
    """
    quad = plate_quad(rng, plate_width, tilt)
    extent = quad.max(axis=0) - quad.min(axis=0)
    pad = margin * extent[0]
    quad = (quad - quad.min(axis=0) + pad).astype(np.float32)
    width, height = (np.ceil(extent + 2 * pad).astype(int) + 1).tolist()
    image = _background(rng, height, width)
    _draw_car(rng, image, quad)
    text, _ = _draw_plate(rng, image, quad)
    image = _camera(rng, image, max_motion=max(3, round(plate_width / 25)))
    return PlateSample(image, text, quad)


def _draw_plate(
    rng: np.random.Generator, image: np.ndarray, quad: np.ndarray, other_plates: Sequence[tuple[float, ...]] = ()
) -> tuple[str, bool]:
    """Draw a random plate (sometimes in a holder, sometimes partly occluded) on ``quad``; returns its text and
    whether an occluder was drawn over it.

    An occluder never reaches ``other_plates`` (their boxes): every label keeps at least 80 % of its plate visible.
    """
    plate, plate_text = random_plate(rng)
    if rng.random() < 0.5:
        _draw_plate_holder(rng, image, quad)
    blur_sigma = rng.uniform(0.3, 1.2) if rng.random() < 0.2 else 0.0
    paste_plate(image, plate, quad, blur_sigma)
    occluded = bool(rng.random() < 0.08) and _occlude(rng, image, quad, other_plates)
    return plate_text.text, occluded
