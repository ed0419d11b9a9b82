"""Trivial models for bench_stream.py: as cheap as a model can be, so what is left is the daemon's own cost.

The benchmark copies this file next to the temporary registry (the registry's folder is on the
daemon's sys.path), and imports it itself for the raw baselines.
"""

from __future__ import annotations

import hashlib

import numpy as np

DIM = 384
FIXED = np.full(DIM, 1.0 / np.sqrt(DIM), dtype=np.float32)  # a unit vector


def fixed(text: str) -> np.ndarray:
    """The same 384-d float32 vector for every input."""
    return FIXED


def hashed(text: str) -> np.ndarray:
    """A deterministic pseudo-random unit vector, seeded by a hash of the text: texts differ, vectors differ."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return vector
