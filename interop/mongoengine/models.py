"""A tolerant toy model for the interop run: letter counts of whatever value it is given."""

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def letters(value) -> np.ndarray:
    vector = np.zeros(26, dtype=np.float32)
    for ch in str(value).lower():
        if ch in ALPHABET:
            vector[ALPHABET.index(ch)] += 1
    vector[0] += 1e-3  # never all zeros (cosine)
    return vector
