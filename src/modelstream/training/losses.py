"""Losses: the tutorial's ranking loss, BCE with logits and pos_weight, the autoregressive cross-entropy,
and user callables by import path.

A loss takes two batches (tensors) and returns a scalar tensor: for a semantic index the outputs
of its two models, row i of each from the same document; for an imputation the model's outputs
and the target model's outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ranking_loss(x, y, measure: Callable | None = None):
    """Each row of x should be most similar to the same row of y, among all rows of y, by `measure`
    (cosine unless given): the softmax cross-entropy of the similarity matrix's diagonal."""
    import torch

    from modelstream.training.measures import cosine

    similarities = (measure or cosine)(x, y)
    return -torch.nn.functional.log_softmax(similarities, dim=1).diag().mean()


def bce_loss(pos_weight: Any = None):
    """BCE on logits; pos_weight (a number or one per output) weighs the positives of rare labels up."""
    import torch

    weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
    return torch.nn.BCEWithLogitsLoss(pos_weight=weight)


def autoregressive_loss(logits, targets):
    """Cross-entropy of each position's next-token logits (N x L x tokens) against the target ids (N x L),
    counted up to and including the first stop token (the highest id, which also pads), averaged per
    row, then over rows: long captions weigh no more than short ones."""
    import torch

    stop = logits.shape[2] - 1
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    counted = torch.ones_like(per_token)
    counted[:, 1:] = (targets[:, :-1] != stop).to(per_token.dtype)  # after a stop, nothing is learned
    return ((per_token * counted).sum(dim=1) / counted.sum(dim=1)).mean()


def auto_pos_weight(targets) -> list[float]:
    """negatives / positives per output column over the training targets (1 where a label never occurs)."""
    import torch

    t = torch.as_tensor(targets, dtype=torch.float32)
    positives = t.sum(dim=0)
    negatives = t.shape[0] - positives
    return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives)).tolist()


def resolve(name: str, search: list[Path], pos_weight: Any = None, measure: Callable | None = None):
    if name == "ranking":
        return ranking_loss if measure is None else functools.partial(ranking_loss, measure=measure)
    if name == "bce":
        return bce_loss(pos_weight)
    if name == "autoregressive":
        return autoregressive_loss
    from modelstream.registry.models import import_path

    target = import_path(name, search)
    return target() if isinstance(target, type) else target
