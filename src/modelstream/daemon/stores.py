"""Where outputs live. One write path, two stores.

`inline` (the tutorial's layout) sets `_outputs.<key>.<model>` and `_modelstream.<model>` inside the
user's document, guarded on the input fields so a result computed from an older document never
lands on a newer one. `collection` keeps the same layout in a side collection `_outputs.<coll>`
keyed by the source `_id`, and never writes to the user's collection at all.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteMany, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from modelstream.daemon.documents import FINGERPRINTS, OUTPUTS, SIDE_PREFIX, get_path, id_key

# The resume point must survive a crash of the server and a failover, or it could cover outputs that
# were lost: it is journaled and on a majority. Outputs are written on a majority without asking for
# the journal one write at a time: the journal and replication are both in order, so the journaled,
# majority checkpoint that follows a batch makes every output before it durable as well. (On MongoDB
# majority writes are journaled anyway by default; a server that syncs per journaled statement, as the
# embedded one does, spent half its time on those syncs.)
DURABLE = WriteConcern(w="majority", j=True)
ON_MAJORITY = WriteConcern(w="majority")

ID_CHUNK = 256  # large $in lists are slow on some servers; chunks keep each query cheap


@dataclass
class DocWrite:
    """Everything one batch changes in one document's outputs: one update, one round trip for all."""

    doc_id: Any
    sets: dict[str, Any] = field(default_factory=dict)
    unsets: list[str] = field(default_factory=list)
    guard: dict[str, Any] = field(default_factory=dict)  # input fields as read; inline writes require them unchanged
    models: set[str] = field(default_factory=set)
    landed: bool = True  # False: the guard did not match (the document changed or went): do not index it

    def update(self) -> dict:
        update: dict[str, Any] = {}
        if self.sets:
            update["$set"] = self.sets
        if self.unsets:
            update["$unset"] = {path: "" for path in self.unsets}
        return update


@dataclass
class WriteFailure:
    doc_id: Any
    models: set[str]
    message: str
    code: int | None
    hint: str | None


def chunks(items: list, size: int = ID_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class InlineStore:
    kind = "inline"

    def __init__(self, source: Collection):
        self.source = source.with_options(write_concern=ON_MAJORITY)

    def stored(self, docs: list[dict]) -> dict[Hashable, dict]:
        """The outputs and fingerprints each document already has: inline, they came with it."""
        return {id_key(d["_id"]): d for d in docs}

    def write(self, writes: list[DocWrite]) -> list[WriteFailure]:
        kept = [w for w in writes if w.update()]
        ops = [UpdateOne({"_id": w.doc_id, **w.guard}, w.update()) for w in kept]
        failures, matched = _bulk(self.source, ops, kept,
                                  hint_121="this collection's validator rejects extra fields: set `outputs: "
                                           f"{{collections: {{{self.source.name}: collection}}}}` to keep outputs "
                                           "in a side collection")
        if matched < len(kept) - len(failures):
            failed = {id_key(f.doc_id) for f in failures}
            self._mark_superseded([w for w in kept if id_key(w.doc_id) not in failed])
        return failures

    def _mark_superseded(self, writes: list[DocWrite]) -> None:
        """Some guarded writes matched nothing: find which (input changed, document gone) so they are not indexed.

        A later change event brings those documents up to date; indexing the superseded result now
        would leave a vector that no later event corrects when the newer output is already stored.
        A write that landed and whose document changed just after is marked too: harmless, as above.
        """
        current: dict[Hashable, dict] = {}
        for part in chunks([w.doc_id for w in writes]):
            for doc in self.source.find({"_id": {"$in": part}}):
                current[id_key(doc["_id"])] = doc
        for w in writes:
            doc = current.get(id_key(w.doc_id))
            if doc is None or any(get_path(doc, path) != value for path, value in w.guard.items()):
                w.landed = False

    def forget(self, doc_ids: list[Any]) -> None:
        """A deleted document took its inline outputs with it."""

    def drop(self) -> None:
        """Outputs went with the dropped collection."""

    def stored_ids(self) -> None:
        return None


class CollectionStore:
    kind = "collection"

    def __init__(self, source: Collection, own: Database | None = None):
        self.source = source
        own = source.database if own is None else own
        self.side = own.get_collection(SIDE_PREFIX + source.name, write_concern=ON_MAJORITY)

    def stored(self, docs: list[dict]) -> dict[Hashable, dict]:
        found: dict[Hashable, dict] = {}
        for part in chunks([d["_id"] for d in docs]):
            for side in self.side.find({"_id": {"$in": part}}):
                found[id_key(side["_id"])] = side
        return found

    def write(self, writes: list[DocWrite]) -> list[WriteFailure]:
        kept = [w for w in writes if w.update()]
        ops = [UpdateOne({"_id": w.doc_id}, w.update(), upsert=True) for w in kept]
        return _bulk(self.side, ops, kept, hint_121=None)[0]

    def forget(self, doc_ids: list[Any]) -> None:
        ops = [DeleteMany({"_id": {"$in": part}}) for part in chunks(list(doc_ids))]
        if ops:
            self.side.bulk_write(ops, ordered=False)

    def drop(self) -> None:
        self.side.drop()

    def stored_ids(self) -> Iterable[Any]:
        return (d["_id"] for d in self.side.find({}, {"_id": 1}).sort("_id", 1))


def _bulk(target: Collection, ops: list, writes: list[DocWrite],
          hint_121: str | None) -> tuple[list[WriteFailure], int]:
    """The writes that failed, and how many matched a document."""
    if not ops:
        return [], 0
    try:
        return [], target.bulk_write(ops, ordered=False).matched_count
    except BulkWriteError as exc:
        failures = []
        for error in exc.details.get("writeErrors", []):
            write = writes[error["index"]]
            code = error.get("code")
            failures.append(WriteFailure(write.doc_id, write.models, error.get("errmsg", "write failed"), code,
                                         hint_121 if code == 121 else None))
        return failures, exc.details.get("nMatched", 0)


def store_for(kind: str, source: Collection, own: Database | None = None) -> InlineStore | CollectionStore:
    """The store of one collection; `own` is the database of the daemon's own collections (side outputs)."""
    return CollectionStore(source, own) if kind == "collection" else InlineStore(source)


__all__ = ["FINGERPRINTS", "OUTPUTS", "CollectionStore", "DocWrite", "InlineStore", "WriteFailure", "store_for"]
