"""Locating the plate typefaces.

Russian plates use a narrow DIN-like face (GOST R 50577). The closest free match in the package registries is OSP-DIN
from Debian's ``fonts-opendin`` (a DIN 1451 Mittelschrift revival). Its 5, 6 and 9 end in curled hooks, whereas the
plate figures have straight diagonal strokes; those three come from Roadgeek 2014 Series D (``fonts-roadgeek``, a
road-sign face). The published recogniser, trained on real plates, reads 6 and 9 drawn in OSP-DIN as 8.

Each face is found at its usual install path, else through ``fc-match``; an environment variable overrides either.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from alpr.system_packages import local_root


@dataclass(frozen=True)
class FontFace:
    """A TrueType face: its family name, the Debian package that installs it, known paths and an override variable."""

    family: str
    package: str
    known_paths: tuple[str, ...]
    env: str


MAIN_FACE = FontFace(
    "OSP-DIN",
    "fonts-opendin",
    ("/usr/share/fonts/truetype/opendin/OSP-DIN.ttf", "/usr/local/share/fonts/OSP-DIN.ttf"),
    "ALPR_PLATE_FONT",
)
FIGURES_FACE = FontFace(
    "Roadgeek 2014 Series D",
    "fonts-roadgeek",
    ("/usr/share/fonts/truetype/roadgeek/RG2014D.ttf", "/usr/local/share/fonts/RG2014D.ttf"),
    "ALPR_PLATE_FIGURES_FONT",
)
# Characters drawn from FIGURES_FACE; every other one from MAIN_FACE.
FIGURES_FACE_CHARS = frozenset("569")


class PlateFontNotFoundError(FileNotFoundError):
    """A plate typeface is not installed."""


def _fc_match(family: str) -> Path | None:
    """The file fontconfig picks for ``family``, if it really is that family (fc-match always answers something)."""
    if shutil.which("fc-match") is None:
        return None
    try:
        answer = subprocess.run(
            ["fc-match", "--format=%{family}\n%{file}", family], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = answer.splitlines()
    if len(lines) < 2 or family.lower() not in lines[0].replace("\\", "").lower():
        return None
    return Path(lines[1])


def missing_font_message(face: FontFace) -> str:
    """What to do when ``face`` is missing."""
    return (
        f"the plate font {face.family} is not installed: `make system-packages` (or `apt-get install {face.package}` "
        f"on Debian), or point {face.env} at its TrueType file"
    )


@functools.cache
def font_path(face: FontFace) -> Path:
    """Path of the TrueType file of ``face``; raises ``PlateFontNotFoundError`` when it is missing."""
    override = os.environ.get(face.env)
    if override:
        if not Path(override).is_file():
            raise PlateFontNotFoundError(f"{face.env}={override} is not a file")
        return Path(override)
    # The system's copy, else the one `make` unpacked into the virtual environment without root.
    for candidate in (*face.known_paths, *(str(local_root() / path.lstrip("/")) for path in face.known_paths)):
        if Path(candidate).is_file():
            return Path(candidate)
    matched = _fc_match(face.family)
    if matched is not None and matched.is_file():
        return matched
    raise PlateFontNotFoundError(missing_font_message(face))


def glyph_font_path(char: str) -> Path:
    """The TrueType file to draw ``char`` with."""
    return font_path(FIGURES_FACE if char in FIGURES_FACE_CHARS else MAIN_FACE)
