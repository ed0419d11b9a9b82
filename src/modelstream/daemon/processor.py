"""One batch of documents through the model graph: plan, run, write, index.

The same path serves the start-up scan and the change stream. For each document and each
active model (upstream first) it compares the fingerprint stored with the output against the
fingerprint of the document as it is now: equal means up to date, so replays and repeated
events cost a comparison, not a model call. Whatever is stale runs in batches of the model's
`batch_size`; a batch that fails is retried item by item so one poison document fails alone.
All outputs of a document go out in one update, all documents in one bulk write.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from modelstream import log
from modelstream.content import ContentError, decode_input, reader_for, to_stored, vector_of
from modelstream.daemon.documents import FINGERPRINTS, own_database, fingerprint, get_path, id_key, user_fields
from modelstream.daemon.failures import FailureLog
from modelstream.daemon.stats import Stats
from modelstream.daemon.stores import DocWrite, chunks, store_for
from modelstream.indexers import VectorIndex
from modelstream.registry import BASE_KEY, Model, ModelSpec, Plan

logger = log.get("modelstream.processor")

RETRY_DELAYS_S = (0.05, 0.2)
RECENT_LIMIT = 200_000  # fingerprints remembered after writing them (about 40 MB at the limit)  # per-item retries after a failed batch: bounded, then recorded


class _Missing:
    """An input that is not there (field absent, upstream not computed): the model does not apply."""


MISSING = _Missing()


@dataclass
class _Doc:
    doc: dict
    stored: dict  # the document (inline) or side document (collection) holding outputs and fingerprints
    write: DocWrite
    fresh: dict[str, Any]  # model -> output computed in this batch


class Processor:
    def __init__(self, db: Database, plan: Plan, models: dict[str, Model], indexes: dict[str, VectorIndex],
                 failures: FailureLog, stats: Stats):
        self.db = db
        self.plan = plan
        self.models = models
        self.indexes = indexes
        self.failures = failures
        self.stats = stats
        registry = plan.registry
        own = own_database(db, registry)
        self.stores = {c: store_for(registry.outputs.store_for(c), db[c], own) for c in registry.collections()}
        self.content = reader_for(registry)  # `_content` types and url fetching
        self.recent: OrderedDict[tuple[str, Hashable], dict[str, str]] = OrderedDict()

    def index_specs(self, collection: str):
        return [s for s in self.plan.registry.indexes.values()
                if self.plan.registry.models[s.source_model].collection == collection]

    # -- the batch -----------------------------------------------------------------------------

    def process(self, collection: str, docs: list[dict], deleted: list[Any], *, load_index: bool = False,
                force: frozenset[str] = frozenset()) -> None:
        """Bring the outputs and indexes of these documents up to date; forget the deleted ones."""
        store = self.stores[collection]
        if docs:
            stored = store.stored(docs)
            batch = [_Doc(d, self._with_recent(collection, d["_id"], stored.get(id_key(d["_id"]), {})),
                          DocWrite(d["_id"]), {}) for d in docs]
            for spec in self.plan.models_of(collection):
                self._run_model(collection, spec, batch, force)
            writes = [b.write for b in batch if b.write.update()]
            write_failures = store.write(writes)
            self._record_write_failures(collection, write_failures)
            failed = {id_key(f.doc_id) for f in write_failures}
            landed = [b for b in batch if id_key(b.doc["_id"]) not in failed and b.write.landed]
            self._remember(collection, landed)
            self.failures.resolved(collection, [(m, b.doc["_id"]) for b in landed for m in b.write.models
                                                if m in b.fresh])
            self._update_indexes(collection, landed, load_index)
        if deleted:
            store.forget(deleted)
            for spec in self.index_specs(collection):
                if spec.name in self.indexes:
                    self.indexes[spec.name].remove(deleted)

    # -- fingerprints just written ---------------------------------------------------------------
    # An insert event carries the document as inserted, without the outputs we wrote since (the start-up
    # scan, or a batch just before a crash). Remembering what we wrote spares recomputing it on replay.

    def _remember(self, collection: str, items: list[_Doc]) -> None:
        for item in items:
            written = {path.split(".", 1)[1]: fp for path, fp in item.write.sets.items()
                       if path.startswith(FINGERPRINTS + ".")}
            gone = [path.split(".", 1)[1] for path in item.write.unsets if path.startswith(FINGERPRINTS + ".")]
            if not written and not gone:
                continue
            key = (collection, id_key(item.doc["_id"]))
            known = self.recent.pop(key, {})
            known.update(written)
            for name in gone:
                known.pop(name, None)
            self.recent[key] = known
        while len(self.recent) > RECENT_LIMIT:
            self.recent.popitem(last=False)

    def forget_recent(self, collection: str) -> None:
        """A dropped collection's outputs are gone: what we remember writing no longer holds."""
        for key in [k for k in self.recent if k[0] == collection]:
            del self.recent[key]

    def _with_recent(self, collection: str, doc_id: Any, stored: dict) -> dict:
        known = self.recent.get((collection, id_key(doc_id)))
        if not known:
            return stored
        merged = dict(stored)
        merged[FINGERPRINTS] = {**stored.get(FINGERPRINTS, {}), **known}
        return merged

    def _run_model(self, collection: str, spec: ModelSpec, batch: list[_Doc], force: frozenset[str]) -> None:
        name = spec.name
        version = self.plan.versions[name]
        roots = self.plan.roots[name]
        matching = self._matching_ids(collection, spec, batch)
        todo: list[tuple[_Doc, Any, str]] = []
        pending: list[tuple[_Doc, str, bool]] = []
        for item in batch:
            has_output = get_path(item.stored, f"{FINGERPRINTS}.{name}") is not None
            if matching is not None and id_key(item.doc["_id"]) not in matching:
                if has_output:
                    self._unset(item, spec)
                continue
            fp = fingerprint(version, roots, item.doc)
            if name not in force and (get_path(item.stored, f"{FINGERPRINTS}.{name}") == fp
                                      or self.failures.failed_before(collection, name, item.doc["_id"], fp)):
                continue  # up to date, or failed on this very input already (`modelstream retry` re-queues)
            pending.append((item, fp, has_output))
        self._prefetch(spec, [item for item, _, _ in pending])
        bad_input: list[dict] = []
        for item, fp, has_output in pending:
            try:
                value = self._input(spec, item)
            except ContentError as exc:  # undecodable bytes, unknown type, broken url: this document fails
                bad_input.append({"collection": collection, "model": name, "doc_id": item.doc["_id"],
                                  "error": f"{spec.key}: {exc}", "attempts": exc.attempts, "fingerprint": fp})
                continue
            if value is MISSING:
                if has_output:
                    self._unset(item, spec)
                continue
            todo.append((item, value, fp))
        if bad_input:
            logger.warning("documents failed", model=name, collection=collection, count=len(bad_input),
                           first_id=str(bad_input[0]["doc_id"]), first_error=bad_input[0]["error"])
            self.failures.record(bad_input)
            self.stats.add(self.stats.failed, name, len(bad_input))
        if not todo:
            return
        model = self.models[name]
        started = time.perf_counter()
        for part in chunks(todo, spec.batch_size):
            self.stats.in_progress[name] = len(part)
            batch_started = time.perf_counter()
            outputs, errors = self._predict(model, [value for _, value, _ in part])
            self.stats.model_batch(name, time.perf_counter() - batch_started)
            self.stats.in_progress[name] = 0
            failed = []
            for (item, _, fp), output, error in zip(part, outputs, errors):
                if error is not None:
                    failed.append({"collection": collection, "model": name, "doc_id": item.doc["_id"],
                                   "error": error, "attempts": 1 + len(RETRY_DELAYS_S), "fingerprint": fp})
                    continue
                try:
                    stored_value = to_stored(output, spec.vector)
                except Exception as exc:  # noqa: BLE001 - an unstorable output is this document's failure
                    failed.append({"collection": collection, "model": name, "doc_id": item.doc["_id"],
                                   "error": f"output cannot be stored: {exc}", "attempts": 1,
                                   "fingerprint": fp})
                    continue
                item.fresh[name] = output
                item.write.sets[spec.output_path()] = stored_value
                item.write.sets[f"{FINGERPRINTS}.{name}"] = fp
                item.write.models.add(name)
                self._guard(item, roots)
            if failed:
                logger.warning("documents failed", model=name, collection=collection, count=len(failed),
                               first_id=str(failed[0]["doc_id"]), first_error=failed[0]["error"])
                self.failures.record(failed)
                self.stats.add(self.stats.failed, name, len(failed))
            self.stats.add(self.stats.done, name, len(part) - len(failed))
        logger.debug("model batch", model=name, n=len(todo), ms=round(1000 * (time.perf_counter() - started), 1))

    def _predict(self, model: Model, values: list[Any]) -> tuple[list[Any], list[str | None]]:
        """Outputs and per-item errors; a failing batch falls back to one item at a time."""
        try:
            return model.predict(values), [None] * len(values)
        except Exception:  # noqa: BLE001 - isolate the poison item below
            if len(values) == 1 and not RETRY_DELAYS_S:
                raise
        outputs: list[Any] = []
        errors: list[str | None] = []
        for value in values:
            for attempt in range(len(RETRY_DELAYS_S) + 1):
                try:
                    outputs.append(model.predict([value])[0])
                    errors.append(None)
                    break
                except Exception as exc:  # noqa: BLE001 - recorded with its reason
                    if attempt == len(RETRY_DELAYS_S):
                        outputs.append(None)
                        errors.append(f"{type(exc).__name__}: {exc}")
                    else:
                        time.sleep(RETRY_DELAYS_S[attempt])
        return outputs, errors

    # -- inputs, guards, filters ---------------------------------------------------------------

    def _input(self, spec: ModelSpec, item: _Doc) -> Any:
        """The value a model reads: its key field, or an upstream output where `features` says so."""
        if spec.key == BASE_KEY:
            value = user_fields(item.doc)
            for field_name, upstream in spec.features.items():
                upstream_value = self._upstream_output(upstream, item)
                if upstream_value is MISSING:
                    return MISSING
                value[field_name] = upstream_value
            return value
        if spec.key in spec.features:
            return self._upstream_output(spec.features[spec.key], item)
        value = get_path(item.doc, spec.key, MISSING)
        if value is MISSING or value is None:
            return MISSING
        return self.content.decode(value)

    def _prefetch(self, spec: ModelSpec, items: list[_Doc]) -> None:
        """Fetch the `_content.url`s this model is about to read, concurrently (failures show in `_input`)."""
        if spec.key != BASE_KEY and spec.key not in spec.features and items:
            self.content.prefetch([get_path(item.doc, spec.key, None) for item in items])

    def _upstream_output(self, upstream: str, item: _Doc) -> Any:
        if upstream in item.fresh:
            return item.fresh[upstream]
        spec = self.plan.registry.models[upstream]
        current = fingerprint(self.plan.versions[upstream], self.plan.roots[upstream], item.doc)
        if get_path(item.stored, f"{FINGERPRINTS}.{upstream}") != current:
            return MISSING  # upstream failed or is filtered out: nothing up to date to read
        value = get_path(item.stored, spec.output_path(), MISSING)
        return value if value is MISSING else decode_input(value)

    def _guard(self, item: _Doc, roots: tuple[str, ...]) -> None:
        """Inline writes only land if the input fields are still as read (a later change wins)."""
        if roots == (BASE_KEY,):
            return
        for root in roots:
            item.write.guard[root] = get_path(item.doc, root)

    def _unset(self, item: _Doc, spec: ModelSpec) -> None:
        item.write.unsets += [spec.output_path(), f"{FINGERPRINTS}.{spec.name}"]
        item.write.models.add(spec.name)

    def _matching_ids(self, collection: str, spec: ModelSpec, batch: list[_Doc]) -> set[Hashable] | None:
        """Ids of the batch that match the model's `filter` (asked of the server: its query language)."""
        if not spec.filter:
            return None
        found: set[Hashable] = set()
        for part in chunks([b.doc["_id"] for b in batch]):
            query = {"$and": [{"_id": {"$in": part}}, spec.filter]}
            found.update(id_key(d["_id"]) for d in self.db[collection].find(query, {"_id": 1}))
        return found

    # -- after the write -------------------------------------------------------------------------

    def _record_write_failures(self, collection: str, failures) -> None:
        entries = []
        for failure in failures:
            for model in sorted(failure.models) or ["*"]:
                entries.append({"collection": collection, "model": model, "doc_id": failure.doc_id,
                                "error": f"write rejected (code {failure.code}): {failure.message}",
                                "hint": failure.hint, "attempts": 1})
        if entries:
            logger.error("writes rejected", collection=collection, count=len(failures),
                         first_error=entries[0]["error"], hint=entries[0]["hint"])
            self.failures.record(entries)

    def _update_indexes(self, collection: str, batch: list[_Doc], load_index: bool) -> None:
        for spec in self.index_specs(collection):
            index = self.indexes.get(spec.name)
            if index is None:
                continue  # an offline backfill keeps no indexes
            source = self.plan.registry.models[spec.source_model]
            ids, vectors, gone = [], [], []
            for item in batch:
                doc_id = item.doc["_id"]
                if source.name in item.fresh:
                    vector = vector_of(to_stored(item.fresh[source.name]))
                elif source.output_path() in item.write.unsets:
                    gone.append(doc_id)
                    continue
                elif load_index or doc_id not in index:
                    vector = vector_of(get_path(item.stored, source.output_path()))
                else:
                    continue
                if vector is None:
                    gone.append(doc_id)
                else:
                    ids.append(doc_id)
                    vectors.append(vector)
            index.upsert(ids, vectors)
            if gone:
                index.remove(gone)
