"""Small deterministic models for the tests: exact outputs we can check by hand."""

from __future__ import annotations

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def letters(text: str) -> np.ndarray:
    """Letter counts: a 26-d vector; texts sharing letters are close."""
    if not isinstance(text, str):
        raise TypeError(f"letters reads text, got {type(text).__name__}")
    if "POISON" in text:
        raise ValueError("poisoned input")
    vector = np.zeros(26, dtype=np.float32)
    for ch in text.lower():
        if ch in ALPHABET:
            vector[ALPHABET.index(ch)] += 1
    return vector


def length(text: str) -> int:
    return len(text)


class Scale:
    """A chained model with the tutorial's preprocess/forward/postprocess shape."""

    def __init__(self, factor: float = 2.0):
        self.factor = factor

    def preprocess(self, vector):
        return np.asarray(vector, dtype=np.float32)

    def forward(self, batch):
        return [item * self.factor for item in batch]

    def postprocess(self, output):
        return output


def total(doc: dict) -> float:
    """Fan-in over `_base`: reads two upstream outputs substituted into the document."""
    return float(np.sum(doc["text"])) + float(doc["title"])


FLAKY_MARKER = "FLAKY_MARKER_FILE"


def flaky(text: str) -> int:
    """Fails while the file named by $FLAKY_MARKER_FILE exists: a model with a transient outage."""
    import os

    marker = os.environ.get(FLAKY_MARKER)
    if marker and os.path.exists(marker):
        raise RuntimeError("backend unavailable")
    return len(text)


HOLD_MARKER = "HOLD_MARKER_FILE"


def hold(text: str) -> int:
    """Blocks while the file named by $HOLD_MARKER_FILE exists (a minute at most): a model, or an `apply`,
    that is still running for as long as a test needs, with no guessing at durations."""
    import os
    import time

    marker = os.environ.get(HOLD_MARKER)
    deadline = time.monotonic() + 60
    while marker and os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(text)
