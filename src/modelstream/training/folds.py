"""The train/valid fold of a document, computed from its `_id` alone.

The tutorial stored a `_fold` field in every document. modelstream never writes user fields (and
the `collection` store promises not to write the user's collection at all), so the fold is a pure
function instead: blake2b of the BSON-encoded `_id`, read as a number in [0, 1); below the
registry's `validation.ratio` (default 0.1) the document is in the valid fold, otherwise in train.
The same `_id` always lands in the same fold, on every machine, with no state to keep in step;
changing the ratio only moves documents between folds at the margin (a document in the valid fold
at 0.1 stays there at 0.2).
"""

from __future__ import annotations

import hashlib
from typing import Any

import bson

TRAIN = "train"
VALID = "valid"


def position(doc_id: Any) -> float:
    """Where an `_id` falls in [0, 1): uniform over ids, stable across processes and machines."""
    digest = hashlib.blake2b(bson.encode({"_id": doc_id}), digest_size=8, person=b"ms-fold").digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def fold_of(doc_id: Any, ratio: float) -> str:
    """`valid` for about `ratio` of all ids, `train` for the rest."""
    return VALID if position(doc_id) < ratio else TRAIN
