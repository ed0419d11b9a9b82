"""What a model reads from one document record, outside the daemon: its key field, or the stored
output of an upstream model where `features` says so (the daemon's `_input`, without computing).

A record is a user document together with its stored `_outputs` and `_modelstream` fingerprints
(from the inline document or the side collection). Upstream outputs are used only when their
fingerprint is current, unless the record is a frozen validation record (a snapshot: its versions
are compared once, by the caller).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pymongo.database import Database

from modelstream.content import decode_input
from modelstream.daemon.documents import FINGERPRINTS, fingerprint, get_path, id_key, user_fields
from modelstream.daemon.stores import store_for
from modelstream.registry import BASE_KEY, ModelSpec, Plan
from modelstream.training import folds

MISSING = object()
PAGE = 512

try:  # the daemon's own collections may live in another database (outputs.database)
    from modelstream.daemon.documents import own_database
except ImportError:  # pragma: no cover - older trees
    def own_database(db: Any, registry: Any) -> Any:
        return db


class Inputs:
    def __init__(self, plan: Plan, reader: Any = None):
        self.plan = plan
        self.reader = reader

    def value(self, spec: ModelSpec, record: dict, *, frozen: bool = False) -> Any:
        if spec.key == BASE_KEY:
            value = user_fields(record)
            for field_name, upstream in spec.features.items():
                upstream_value = self.upstream(upstream, record, frozen)
                if upstream_value is MISSING:
                    return MISSING
                value[field_name] = upstream_value
            return value
        if spec.key in spec.features:
            return self.upstream(spec.features[spec.key], record, frozen)
        value = get_path(record, spec.key, MISSING)
        if value is MISSING or value is None:
            return MISSING
        return self.reader.decode(value) if self.reader is not None else decode_input(value)

    def upstream(self, name: str, record: dict, frozen: bool) -> Any:
        spec = self.plan.registry.models[name]
        if not frozen:
            current = fingerprint(self.plan.versions[name], self.plan.roots[name], record)
            if get_path(record, f"{FINGERPRINTS}.{name}") != current:
                return MISSING  # not computed yet, or stale: run the daemon or `modelstream backfill` first
        value = get_path(record, spec.output_path(), MISSING)
        return value if value is MISSING else decode_input(value)


def records(db: Database, plan: Plan, collection: str, query: dict | None = None,
            projection: dict | None = None) -> Iterator[dict]:
    """Each document of a collection with its stored outputs and fingerprints merged in."""
    store = store_for(plan.registry.outputs.store_for(collection), db[collection],
                      own_database(db, plan.registry))
    page: list[dict] = []
    for doc in db[collection].find(query or {}, projection).sort("_id", 1).batch_size(PAGE):
        page.append(doc)
        if len(page) >= PAGE:
            yield from _merge(store, page)
            page = []
    yield from _merge(store, page)


def _merge(store: Any, page: list[dict]) -> Iterator[dict]:
    if not page:
        return
    stored = store.stored(page)
    for doc in page:
        side = stored.get(id_key(doc["_id"]), {})
        record = user_fields(doc)
        for key in ("_outputs", FINGERPRINTS):
            if key in side:
                record[key] = side[key]
        yield record


def train_records(db: Database, plan: Plan, collection: str, exclude: set) -> Iterator[dict]:
    """Records of the train fold (never a validation set's documents, whatever the ratio was then)."""
    ratio = plan.registry.validation.ratio
    for record in records(db, plan, collection):
        if folds.fold_of(record["_id"], ratio) == folds.TRAIN and id_key(record["_id"]) not in exclude:
            yield record
