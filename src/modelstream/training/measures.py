"""Similarity between two batches of vectors: a matrix, higher means closer (as the index's `measure`)."""

from __future__ import annotations

from typing import Any


def _tensor(x: Any):
    import torch

    t = torch.as_tensor(x)
    return t.float() if not t.is_floating_point() else t


def cosine(x: Any, y: Any):
    x, y = _tensor(x), _tensor(y)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ y.T


def dot(x: Any, y: Any):
    return _tensor(x) @ _tensor(y).T


def l2(x: Any, y: Any):
    """The negated Euclidean distance, so that higher is closer here too."""
    import torch

    return -torch.cdist(_tensor(x), _tensor(y))


MEASURES = {"cosine": cosine, "dot": dot, "l2": l2}
