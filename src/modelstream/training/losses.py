"""Losses: the tutorial's ranking loss, BCE with logits and pos_weight, user callables by import path.

A loss takes two batches (tensors) and returns a scalar tensor: for a semantic index the outputs
of its two models, row i of each from the same document; for an imputation the model's outputs
and the target model's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ranking_loss(x, y):
    """Each row of x should be most similar (cosine) to the same row of y, among all rows of y."""
    import torch

    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarities = x @ y.T
    return -torch.nn.functional.log_softmax(similarities, dim=1).diag().mean()


def bce_loss(pos_weight: Any = None):
    """BCE on logits; pos_weight (a number or one per output) weighs the positives of rare labels up."""
    import torch

    weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
    return torch.nn.BCEWithLogitsLoss(pos_weight=weight)


def auto_pos_weight(targets) -> list[float]:
    """negatives / positives per output column over the training targets (1 where a label never occurs)."""
    import torch

    t = torch.as_tensor(targets, dtype=torch.float32)
    positives = t.sum(dim=0)
    negatives = t.shape[0] - positives
    return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives)).tolist()


def resolve(name: str, search: list[Path], pos_weight: Any = None):
    if name == "ranking":
        return ranking_loss
    if name == "bce":
        return bce_loss(pos_weight)
    from modelstream.registry.models import import_path

    target = import_path(name, search)
    return target() if isinstance(target, type) else target
