"""Small facts about documents: reserved fields, dotted paths, input fingerprints."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator
from typing import Any

import bson

from modelstream.registry.spec import BASE_KEY

OUTPUTS = "_outputs"
FINGERPRINTS = "_modelstream"  # per model: digest of (model version, the input fields it was computed from)
RESERVED = (OUTPUTS, FINGERPRINTS)
STATE_PREFIX = "_modelstream."  # the daemon's own collections: checkpoints, errors
SIDE_PREFIX = "_outputs."  # side collections of the `collection` store

_MISSING = object()


def own_database(db: Any, registry: Any) -> Any:
    """Where the daemon keeps its own collections (side outputs, checkpoints, errors, migrations): the
    watched database, or `outputs.database` for applications that must not see a single foreign write."""
    name = registry.outputs.database
    return db.client[name] if name else db


PAGE = 512


def pages(collection: Any, size: int = PAGE) -> Iterator[list[dict]]:
    """Every document of a collection in `_id` order, a page at a time (one cursor: no big `$in` lists)."""
    page: list[dict] = []
    for doc in collection.find({}).sort("_id", 1).batch_size(size):
        page.append(doc)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def get_path(doc: Any, path: str, default: Any = None) -> Any:
    """doc["a"]["b"] for "a.b"; `default` where any step is missing."""
    value = doc
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return default
    return value


def user_fields(doc: dict) -> dict:
    """The document as the application wrote it (reserved fields dropped)."""
    return {k: v for k, v in doc.items() if k not in RESERVED}


def id_key(doc_id: Any) -> Hashable:
    """A dict key for any BSON `_id` (ObjectId, int, str, or a sub-document)."""
    if isinstance(doc_id, (dict, list)):
        return bson.encode({"_id": doc_id})
    return doc_id


def fingerprint(version: str, roots: tuple[str, ...], doc: dict) -> str:
    """Digest of a model version and the user fields its output depends on: equal means up to date."""
    if roots == (BASE_KEY,):
        values = {"_": user_fields(doc)}
    else:
        values = {str(i): get_path(doc, root) for i, root in enumerate(roots)}
    digest = hashlib.blake2b(version.encode() + bson.encode(values), digest_size=12)
    return digest.hexdigest()
