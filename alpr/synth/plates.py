"""Russian registration plates (GOST R 50577): random texts and rendered plate images.

A plate is drawn flat and upright at ``PlateGeometry.pixels_per_mm`` on a 520x112 mm canvas: a black border, the main
part (letters lower than digits, sharing one baseline), a vertical separator, and the region box with its code over
``RUS`` and the tricolour. Glyphs come from the DIN-like plate font (see ``alpr.synth.fonts``) and are cached.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from alpr.synth.fonts import glyph_font_path
from alpr.vocab import DIGITS, LETTERS

PLATE_WIDTH_MM = 520
PLATE_HEIGHT_MM = 112

# Region codes: every two-digit code and the common three-digit ones.
TWO_DIGIT_REGIONS: tuple[str, ...] = tuple(f"{code:02d}" for code in range(1, 100))
THREE_DIGIT_REGIONS: tuple[str, ...] = (
    "102", "116", "121", "123", "124", "125", "134", "136", "138", "142", "150", "152", "154", "159", "161", "163",
    "164", "173", "174", "177", "178", "186", "190", "196", "197", "199", "277", "299", "716", "750", "763", "777",
    "790", "797", "799",
)  # fmt: skip
THREE_DIGIT_REGION_SHARE = 0.4

_L = f"[{LETTERS}]"
_REGION = r"(?:\d{2,3})"


@dataclass(frozen=True)
class PlateFormat:
    """A GOST plate type: the layout of its main part ('L' letter, 'D' digit, ' ' group break) and its colours."""

    name: str
    main_layout: str
    background_bgr: tuple[int, int, int]
    ink_bgr: tuple[int, int, int]
    share: float

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        """Regular expression that every text of this format matches."""
        main = "".join(_L if slot == "L" else r"\d" for slot in self.main_layout if slot != " ")
        return re.compile(f"{main}{_REGION}")


PLATE_FORMATS: tuple[PlateFormat, ...] = (
    PlateFormat("type1", "L DDD LL", (245, 245, 245), (20, 20, 20), 0.85),  # B840CK197: private cars
    PlateFormat("type1a_taxi", "LL DDD", (40, 200, 245), (20, 20, 20), 0.05),  # AB12377: taxis
    PlateFormat("type2_trailer", "LL DDDD", (245, 245, 245), (20, 20, 20), 0.05),  # AB123477: trailers
    PlateFormat("type20_police", "L DDDD", (150, 70, 20), (245, 245, 245), 0.05),  # A123477: police, white on blue
)
FORMATS_BY_NAME = {plate_format.name: plate_format for plate_format in PLATE_FORMATS}
ANY_PLATE_PATTERN = re.compile("|".join(f"(?:{plate_format.pattern.pattern})" for plate_format in PLATE_FORMATS))


@dataclass(frozen=True)
class PlateText:
    """A plate's characters split into its main part and its region code."""

    plate_format: PlateFormat
    main: str
    region: str

    @property
    def text(self) -> str:
        """The label as the recogniser reads it: main part then region, no spaces."""
        return self.main + self.region


def random_plate_text(rng: np.random.Generator, plate_format: PlateFormat | None = None) -> PlateText:
    """A random text of ``plate_format`` (drawn by the formats' shares when None); never an all-zero number."""
    if plate_format is None:
        shares = np.array([f.share for f in PLATE_FORMATS])
        plate_format = PLATE_FORMATS[rng.choice(len(PLATE_FORMATS), p=shares / shares.sum())]
    while True:
        main = "".join(
            LETTERS[rng.integers(len(LETTERS))] if slot == "L" else DIGITS[rng.integers(10)]
            for slot in plate_format.main_layout
            if slot != " "
        )
        if any(c != "0" for c in main if c in DIGITS):
            break
    regions = THREE_DIGIT_REGIONS if rng.random() < THREE_DIGIT_REGION_SHARE else TWO_DIGIT_REGIONS
    return PlateText(plate_format, main, regions[rng.integers(len(regions))])


@dataclass(frozen=True)
class PlateGeometry:
    """Plate drawing in millimetres (GOST R 50577 type 1 proportions) and the rendering resolution."""

    pixels_per_mm: float = 1.0
    border_inset: float = 2.0
    border_width: float = 2.5
    corner_radius: float = 6.0
    separator_x: float = 390.0
    separator_width: float = 2.5
    digit_height: float = 58.0
    letter_height: float = 42.0
    baseline_y: float = 92.0
    digit_stretch: float = 1.9  # horizontal scale: the plate's figures are much wider than DIN Mittelschrift's
    letter_stretch: float = 2.2
    char_gap: float = 11.0
    group_gap: float = 18.0
    region_height: float = 50.0
    region_top: float = 10.0
    region_stretch: float = 1.65
    region_three_digit_stretch: float = 1.35
    region_gap: float = 5.0
    rus_height: float = 13.0
    rus_baseline_y: float = 99.0
    flag_width: float = 22.0
    flag_height: float = 13.0

    @property
    def size_px(self) -> tuple[int, int]:
        """Canvas (height, width) in pixels."""
        return round(PLATE_HEIGHT_MM * self.pixels_per_mm), round(PLATE_WIDTH_MM * self.pixels_per_mm)


DEFAULT_GEOMETRY = PlateGeometry()


@functools.cache
def _font(path: Path, size_px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size_px)


@functools.cache
def _cap_height_ratio(path: Path) -> float:
    """Rendered height of the figure 8 divided by the font size, for the face in ``path``."""
    size = 200
    return _render_glyph("8", _font(path, size)).shape[0] / size


def _render_glyph(char: str, font: ImageFont.FreeTypeFont) -> np.ndarray:
    """Ink coverage (float32 0..1) of ``char`` cropped to its ink."""
    size = round(font.size)
    canvas = Image.new("L", (size * 2, size * 2))
    ImageDraw.Draw(canvas).text((size // 2, size // 2), char, font=font, fill=255)
    return np.asarray(canvas.crop(canvas.getbbox()), dtype=np.float32) / 255.0


@functools.cache
def glyph_mask(
    char: str, height_px: int, stretch: float, boldness: int = 0, max_width: int | None = None
) -> np.ndarray:
    """Ink coverage (float32 0..1) of ``char`` scaled to ``height_px`` tall and ``stretch`` times its natural width.

    ``max_width`` narrows wide glyphs ("M", and the figures of the wider second face) to the plate's fixed pitch;
    ``boldness`` thickens strokes by that many pixels (a dilation), imitating worn or heavier stamping.
    """
    path = glyph_font_path(char)
    glyph = _render_glyph(char, _font(path, max(4, round(height_px / _cap_height_ratio(path)))))
    width = max(1, round(glyph.shape[1] * height_px / glyph.shape[0] * stretch))
    if max_width is not None:
        width = min(width, max_width)
    glyph = cv2.resize(glyph, (width, height_px), interpolation=cv2.INTER_AREA)
    if boldness > 0:
        glyph = cv2.dilate(glyph, np.ones((1, 1 + boldness), np.uint8))
    glyph.setflags(write=False)
    return glyph


def _draw_glyph(ink: np.ndarray, glyph: np.ndarray, left: float, bottom: float) -> None:
    """Blend a glyph into the ink mask with its bottom-left corner at (left, bottom), clipped to the canvas."""
    height, width = glyph.shape
    x0, y0 = round(left), round(bottom) - height
    x1, y1 = min(x0 + width, ink.shape[1]), min(y0 + height, ink.shape[0])
    gx0, gy0 = max(0, -x0), max(0, -y0)
    x0, y0 = max(x0, 0), max(y0, 0)
    if x1 > x0 and y1 > y0:
        target = ink[y0:y1, x0:x1]
        np.maximum(target, glyph[gy0 : gy0 + y1 - y0, gx0 : gx0 + x1 - x0], out=target)


class _Frame(NamedTuple):
    """What every plate of one geometry shares: the ink of border, separator and ``RUS``, and the flag."""

    ink: np.ndarray
    flag: np.ndarray  # BGR float32 stripes
    flag_origin: tuple[int, int]  # (top, left) in the canvas


@functools.cache
def _frame(geometry: PlateGeometry) -> _Frame:
    s = geometry.pixels_per_mm
    height, width = geometry.size_px
    frame = np.zeros((height, width), np.uint8)
    inset, radius = geometry.border_inset * s, geometry.corner_radius * s
    thickness = max(1, round(geometry.border_width * s))
    _rounded_rectangle(frame, inset, inset, width - 1 - inset, height - 1 - inset, radius, thickness)
    sep_x = round(geometry.separator_x * s)
    sep_half = max(1, round(geometry.separator_width * s / 2))
    frame[round(inset) : round(height - inset), sep_x - sep_half : sep_x + sep_half] = 255

    # "RUS" and the flag side by side, centred under the region code.
    region_centre = (geometry.separator_x + PLATE_WIDTH_MM - geometry.border_inset) / 2 * s
    rus = [glyph_mask(c, round(geometry.rus_height * s), 1.0) for c in "RUS"]
    rus_gap, flag_gap = 1.5 * s, 3.0 * s
    flag_w, flag_h = max(3, round(geometry.flag_width * s)), max(3, round(geometry.flag_height * s))
    total = sum(g.shape[1] for g in rus) + 2 * rus_gap + flag_gap + flag_w
    x = region_centre - total / 2
    ink = frame.astype(np.float32) / 255.0
    for glyph in rus:
        _draw_glyph(ink, glyph, x, geometry.rus_baseline_y * s)
        x += glyph.shape[1] + rus_gap
    flag_left, flag_top = round(x + flag_gap - rus_gap), round(geometry.rus_baseline_y * s) - flag_h
    # The flag's thin dark outline is ink; its stripes are paint.
    outline = np.zeros((height, width), np.uint8)
    cv2.rectangle(outline, (flag_left - 1, flag_top - 1), (flag_left + flag_w, flag_top + flag_h), 255, 1)
    np.maximum(ink, outline.astype(np.float32) / 255.0, out=ink)
    flag = np.empty((flag_h, flag_w, 3), np.float32)
    bounds = np.linspace(0, flag_h, len(FLAG_STRIPES_BGR) + 1).round().astype(int)
    for (top, bottom), colour in zip(itertools.pairwise(bounds), FLAG_STRIPES_BGR, strict=True):
        flag[top:bottom] = colour
    for array in (ink, flag):
        array.setflags(write=False)
    return _Frame(ink, flag, (flag_top, flag_left))


def _rounded_rectangle(
    canvas: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float, thickness: int
) -> None:
    """Outline of a rounded rectangle, drawn with 4 lines and 4 quarter-ellipses."""
    x0, y0, x1, y1, r = round(x0), round(y0), round(x1), round(y1), round(radius)
    # The ignores: OpenCV takes a scalar colour for a one-channel canvas; its stubs only admit Sequence[float].
    cv2.line(canvas, (x0 + r, y0), (x1 - r, y0), 255, thickness, cv2.LINE_AA)  # type: ignore[call-overload]
    cv2.line(canvas, (x0 + r, y1), (x1 - r, y1), 255, thickness, cv2.LINE_AA)  # type: ignore[call-overload]
    cv2.line(canvas, (x0, y0 + r), (x0, y1 - r), 255, thickness, cv2.LINE_AA)  # type: ignore[call-overload]
    cv2.line(canvas, (x1, y0 + r), (x1, y1 - r), 255, thickness, cv2.LINE_AA)  # type: ignore[call-overload]
    for centre, start in (
        ((x0 + r, y0 + r), 180),
        ((x1 - r, y0 + r), 270),
        ((x1 - r, y1 - r), 0),
        ((x0 + r, y1 - r), 90),
    ):
        cv2.ellipse(  # type: ignore[call-overload]
            canvas, centre, (r, r), 0, start, start + 90, 255, thickness, cv2.LINE_AA
        )


class GlyphStyle(NamedTuple):
    """Per-plate variation of the characters: extra stroke weight in pixels and a small change of size."""

    boldness: int = 0
    scale: float = 1.0


GLYPH_SCALES = (0.96, 1.0, 1.03)  # few distinct sizes keep the glyph cache small


def _main_part_ink(
    ink: np.ndarray, plate_text: PlateText, geometry: PlateGeometry, rng: np.random.Generator | None, style: GlyphStyle
) -> None:
    """Draw the main part: fixed-pitch cells, a wider gap between letter and digit groups, centred in its box.

    A digit cell is as wide as "0", a letter cell as "H": narrow figures like "1" stay centred, wide ones are narrowed.
    """
    s = geometry.pixels_per_mm
    glyphs: list[np.ndarray] = []
    cells: list[int] = []
    gaps: list[float] = []
    chars = iter(plate_text.main)
    gap = geometry.char_gap * s
    for slot in plate_text.plate_format.main_layout:
        if slot == " ":
            gap = geometry.group_gap * s
            continue
        if slot == "D":
            height, stretch, reference = round(geometry.digit_height * s * style.scale), geometry.digit_stretch, "0"
        else:
            height, stretch, reference = round(geometry.letter_height * s * style.scale), geometry.letter_stretch, "H"
        cell = glyph_mask(reference, height, stretch).shape[1]
        if glyphs:
            gaps.append(gap)
        gap = geometry.char_gap * s
        cells.append(cell)
        glyphs.append(glyph_mask(next(chars), height, stretch, style.boldness, max_width=cell))
    gaps.append(0.0)
    left_edge = (geometry.border_inset + geometry.border_width) * s
    x = left_edge + (geometry.separator_x * s - left_edge - sum(cells) - sum(gaps)) / 2
    baseline = geometry.baseline_y * s
    for glyph, cell, gap_after in zip(glyphs, cells, gaps, strict=True):
        jitter_x, jitter_y = rng.normal(0.0, 0.6 * s, 2) if rng is not None else (0.0, 0.0)
        _draw_glyph(ink, glyph, x + (cell - glyph.shape[1]) / 2 + jitter_x, baseline + jitter_y)
        x += cell + gap_after


def _region_ink(
    ink: np.ndarray, region: str, geometry: PlateGeometry, rng: np.random.Generator | None, style: GlyphStyle
) -> None:
    """Draw the region code centred in the region box, narrower when it has three digits."""
    s = geometry.pixels_per_mm
    height = round(geometry.region_height * s * style.scale)
    stretch = geometry.region_three_digit_stretch if len(region) == 3 else geometry.region_stretch
    cell = glyph_mask("0", height, stretch).shape[1]
    glyphs = [glyph_mask(c, height, stretch, style.boldness, max_width=cell) for c in region]
    gap = geometry.region_gap * s * (0.7 if len(region) == 3 else 1.0)
    total = cell * len(glyphs) + gap * (len(glyphs) - 1)
    centre = (geometry.separator_x + PLATE_WIDTH_MM - geometry.border_inset - geometry.border_width) / 2 * s
    x = centre - total / 2
    bottom = (geometry.region_top + geometry.region_height) * s
    for glyph in glyphs:
        jitter_x, jitter_y = rng.normal(0.0, 0.5 * s, 2) if rng is not None else (0.0, 0.0)
        _draw_glyph(ink, glyph, x + (cell - glyph.shape[1]) / 2 + jitter_x, bottom + jitter_y)
        x += cell + gap


FLAG_STRIPES_BGR = ((250, 250, 250), (170, 60, 0), (40, 30, 210))  # white, blue, red from the top


def render_plate(
    plate_text: PlateText, rng: np.random.Generator | None = None, geometry: PlateGeometry = DEFAULT_GEOMETRY
) -> np.ndarray:
    """The plate as a BGR uint8 image of ``geometry.size_px``.

    With ``rng`` the plate varies as real ones do: character placement, stroke weight, paint and ink tones, dirt.
    Without it the drawing is the clean reference.
    """
    height, width = geometry.size_px
    frame = _frame(geometry)
    style = GlyphStyle(int(rng.integers(0, 2)), float(rng.choice(GLYPH_SCALES))) if rng is not None else GlyphStyle()
    ink = frame.ink.copy()
    _main_part_ink(ink, plate_text, geometry, rng, style)
    _region_ink(ink, plate_text.region, geometry, rng, style)

    plate_format = plate_text.plate_format
    background = np.array(plate_format.background_bgr, np.float32)
    ink_colour = np.array(plate_format.ink_bgr, np.float32)
    if rng is not None:
        background = np.clip(background * rng.uniform(0.8, 1.04) + rng.normal(0, 6, 3), 0, 255)
        ink_colour = np.clip(ink_colour + rng.normal(0, 10, 3) + rng.uniform(-10, 35), 0, 255)
    shading = _dirt(rng, height, width) if rng is not None and rng.random() < 0.6 else None
    # Channel by channel: numpy broadcasting over a trailing axis of 3 is several times slower.
    planes = []
    for channel in range(3):
        plane = background[channel] + ink * (ink_colour[channel] - background[channel])
        top, left = frame.flag_origin
        flag = frame.flag[..., channel] * (background[channel] / 245.0)
        plane[top : top + flag.shape[0], left : left + flag.shape[1]] = flag
        if shading is not None:
            plane *= shading
        planes.append(np.clip(plane, 0, 255).astype(np.uint8))
    return cv2.merge(planes)


def _dirt(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth multiplicative shading in [1 - strength, 1]: grime, uneven lighting, worn paint."""
    strength = rng.uniform(0.05, 0.3)
    coarse = 1.0 - strength * rng.random((3, 9), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def random_plate(rng: np.random.Generator, geometry: PlateGeometry = DEFAULT_GEOMETRY) -> tuple[np.ndarray, PlateText]:
    """A random plate image (BGR uint8, varied as on the road) and its text."""
    plate_text = random_plate_text(rng)
    return render_plate(plate_text, rng, geometry), plate_text
