"""Greedy CTC decoding and the plate confidence, checked against straightforward per-step loops."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from alpr.ctc import collapse, decode_with_confidence, greedy_decode, greedy_path, path_confidence
from alpr.vocab import BLANK_INDEX, CHARS, NUM_CLASSES, encode

STEPS = 18


def logits_for_path(path: list[int], margin: float = 6.0, seed: int = 0) -> np.ndarray:
    """``[1, classes, steps]`` logits whose argmax at each step is ``path``, with random runner-up scores."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, NUM_CLASSES, len(path))).astype(np.float32)
    logits[0, path, np.arange(len(path))] = margin
    return logits


def reference_decode(logits: np.ndarray) -> tuple[str, float]:
    """One plate, step by step: argmax, collapse repeats, drop blanks; product of the best softmax probabilities."""
    text, previous, probability = [], None, 1.0
    for step in range(logits.shape[1]):
        scores = logits[:, step].astype(np.float64)
        best = int(np.argmax(scores))
        probability *= math.exp(scores[best]) / np.exp(scores).sum()
        if best != previous and best != BLANK_INDEX:
            text.append(CHARS[best])
        previous = best
    return "".join(text), probability


def padded(labels: list[int]) -> list[int]:
    return labels + [BLANK_INDEX] * (STEPS - len(labels))


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (padded(encode("B840CK197")), "B840CK197"),
        (padded([1, 1, BLANK_INDEX, 1, 2, 2, BLANK_INDEX, BLANK_INDEX, 3]), "1123"),  # a blank separates repeats
        (padded(encode("A") * 4 + encode("7")), "A7"),
        ([BLANK_INDEX] * STEPS, ""),
        (encode("0123456789ABEKMHOP"), "0123456789ABEKMHOP"),
    ],
)
def test_greedy_decode_collapses_repeats_and_drops_blanks(path: list[int], text: str) -> None:
    assert greedy_decode(logits_for_path(path)) == [text]


def test_batch_matches_the_step_by_step_reference() -> None:
    logits = np.random.default_rng(1).normal(scale=3.0, size=(16, NUM_CLASSES, STEPS)).astype(np.float32)
    texts, confidences = decode_with_confidence(logits)
    for row, text, confidence in zip(logits, texts, confidences, strict=True):
        reference_text, reference_confidence = reference_decode(row)
        assert text == reference_text
        assert confidence == pytest.approx(reference_confidence, rel=1e-5)
    assert confidences.dtype == np.float32 and confidences.shape == (16,)


def test_confidence_is_a_probability() -> None:
    certain = np.full((1, NUM_CLASSES, STEPS), -1e4, dtype=np.float32)
    certain[0, BLANK_INDEX] = 1e4
    uniform = np.zeros((1, NUM_CLASSES, STEPS), dtype=np.float32)
    huge = np.random.default_rng(2).normal(scale=1e3, size=(4, NUM_CLASSES, STEPS)).astype(np.float32)
    assert path_confidence(certain)[0] == pytest.approx(1.0)
    assert path_confidence(uniform)[0] == pytest.approx(NUM_CLASSES**-STEPS, rel=1e-5)
    scores = path_confidence(huge)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))


def test_zero_rows() -> None:
    empty = np.zeros((0, NUM_CLASSES, STEPS), dtype=np.float32)
    texts, confidences = decode_with_confidence(empty)
    assert texts == [] and confidences.shape == (0,) and confidences.dtype == np.float32
    assert greedy_path(empty).shape == (0, STEPS)
    assert collapse(greedy_path(empty)) == []


def test_rejects_logits_of_another_alphabet() -> None:
    with pytest.raises(ValueError, match="23"):
        greedy_decode(np.zeros((1, 10, STEPS), dtype=np.float32))


def test_decoder_does_not_need_torch() -> None:
    probe = "import sys, alpr.ctc; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
