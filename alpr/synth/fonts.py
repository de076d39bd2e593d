"""Locating the plate typeface.

Russian plates use a narrow DIN-like face (GOST R 50577). The closest free match in the package registries is
OSP-DIN from Debian's ``fonts-opendin`` (a DIN 1451 Mittelschrift revival). ``ALPR_PLATE_FONT`` overrides the lookup.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

PLATE_FONT_ENV = "ALPR_PLATE_FONT"
PLATE_FONT_FAMILY = "OSP-DIN"
PLATE_FONT_PACKAGE = "fonts-opendin"
KNOWN_PLATE_FONT_PATHS = (
    "/usr/share/fonts/truetype/opendin/OSP-DIN.ttf",
    "/usr/local/share/fonts/OSP-DIN.ttf",
    "/Library/Fonts/OSP-DIN.ttf",
)


class PlateFontNotFoundError(FileNotFoundError):
    """The plate typeface is not installed."""


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


@functools.cache
def plate_font_path() -> Path:
    """Path of the TrueType file used for plate characters; raises ``PlateFontNotFoundError`` when it is missing."""
    override = os.environ.get(PLATE_FONT_ENV)
    if override:
        if not Path(override).is_file():
            raise PlateFontNotFoundError(f"{PLATE_FONT_ENV}={override} is not a file")
        return Path(override)
    for candidate in KNOWN_PLATE_FONT_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    matched = _fc_match(PLATE_FONT_FAMILY)
    if matched is not None and matched.is_file():
        return matched
    raise PlateFontNotFoundError(missing_font_message())


def missing_font_message() -> str:
    """What to do when the plate font is missing."""
    return (
        f"the plate font {PLATE_FONT_FAMILY} is not installed: `apt-get install {PLATE_FONT_PACKAGE}` (Debian), "
        f"or point {PLATE_FONT_ENV} at a DIN-like TrueType file"
    )
