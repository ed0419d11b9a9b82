"""Similarity between two batches of vectors: a matrix, higher means closer (as the index's `measure`).

A training may name its own: `measure: module:function`, called with (x, y) batches, returning the
len(x) x len(y) similarity matrix as a tensor (the ranking loss and P@k read it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


def resolve(name: str | Callable, search: list[Path] | None = None) -> Callable:
    """A measure by name (cosine, dot, l2) or import path `module:function` (a class: instantiated)."""
    if callable(name):
        return name
    if name in MEASURES:
        return MEASURES[name]
    from modelstream.registry.models import import_path

    target = import_path(name, search or [])
    return target() if isinstance(target, type) else target
