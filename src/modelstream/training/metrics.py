"""Validation metrics: P@k for retrieval, Jaccard for set prediction, and user callables.

A retrieval metric is called with (ranked ids, the id that should be found, or the set of ids that
answer the query when the validation set was made `--relevant-by` a field) and returns a number;
a prediction metric with (prediction, truth). `modelstream validate` and `train` average them over
the validation set. User metrics are import paths `module:function` (a class is instantiated
without arguments), resolved like models: the registry's folder first, then the working directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RETRIEVAL = "retrieval"
PREDICTION = "prediction"
_P_AT = re.compile(r"p_at_([1-9][0-9]*)")


def p_at_k(ranked: list, truth: Any, k: int) -> float:
    """1 when `truth` is among the first k of `ranked`, else 0: averaged, the share of queries that find
    their own document in the top k (the tutorial's P@k, with one relevant document per query). A set
    `truth` holds every right answer (a validation set made `--relevant-by` a field): any one counts."""
    top = list(ranked)[:k]
    if isinstance(truth, (set, frozenset)):
        return 1.0 if any(r in truth for r in top) else 0.0
    return 1.0 if truth in top else 0.0


def jaccard(x: Iterable, y: Iterable) -> float:
    """|x ∩ y| / |x ∪ y| (1 when both are empty); a text counts as the set of its lower-case words (a
    generated caption against the true one)."""
    a, b = set(_items(x)), set(_items(y))
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _items(values: Iterable) -> list:
    if isinstance(values, str):
        return values.lower().split()
    return [tuple(v) if isinstance(v, list) else v for v in values]


def resolve(name: str, search: list[Path]) -> Callable[[Any, Any], float]:
    """A metric by name: p_at_K, jaccard, or `module:function`."""
    match = _P_AT.fullmatch(name)
    if match:
        k = int(match[1])
        return lambda ranked, truth: p_at_k(ranked, truth, k)
    if name == "jaccard":
        return jaccard
    from modelstream.registry.models import import_path

    target = import_path(name, search)
    return target() if isinstance(target, type) else target


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
