"""The LPRNet alphabet: ten digits, the twelve Cyrillic letters that look Latin, and the CTC blank."""

from __future__ import annotations

DIGITS = "0123456789"
# Cyrillic letters used on Russian plates, written with their Latin look-alikes.
LETTERS = "ABEKMHOPCTYX"
BLANK = "-"
CHARS: tuple[str, ...] = (*DIGITS, *LETTERS, BLANK)
BLANK_INDEX = CHARS.index(BLANK)  # 22
NUM_CLASSES = len(CHARS)  # 23
CHAR_TO_INDEX = {c: i for i, c in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    """Class indices of ``text``; raises ``KeyError`` on a character outside the alphabet."""
    return [CHAR_TO_INDEX[c] for c in text]


def decode(indices: list[int]) -> str:
    """Text of a sequence of class indices (no CTC collapsing)."""
    return "".join(CHARS[i] for i in indices)
