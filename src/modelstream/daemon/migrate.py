"""Move existing outputs between the stores: `inline` <-> `collection`.

inline -> collection: each source document's `_outputs` and `_modelstream` are copied into the side
collection `_outputs.<coll>` (upsert by the source `_id`), then `$unset` from the source.
collection -> inline: each side document's fields are `$set` into its source document, then the side
document is deleted (a side document whose source is gone is simply dropped).

Pages go in `_id` order and are fetched with range queries (`_id > last`), never long `$in` lists.
The work left is exactly what is still in the old store, so a rerun after a crash continues where
the crash left it; the last `_id` done is also recorded in `_modelstream.migrations` so a rerun does
not rescan the finished part. Every step is idempotent: a page copied twice is the same page.

The daemon must not run meanwhile (the caller holds `<data_dir>/daemon.lock`): it would keep writing
in the old mode. Values travel as raw BSON, so outputs arrive byte for byte as they were.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.raw_bson import RawBSONDocument
from pymongo import ReplaceOne, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from modelstream.daemon.documents import RESERVED, SIDE_PREFIX, STATE_PREFIX

MIGRATIONS = STATE_PREFIX + "migrations"
PAGE = 500
STORES = ("inline", "collection")
RAW = CodecOptions(document_class=RawBSONDocument)


@dataclass
class Moved:
    collection: str
    to: str
    moved: int = 0  # documents whose outputs changed store in this run
    dropped: int = 0  # side documents whose source document no longer exists
    resumed_from: Any = None  # the `_id` a previous, unfinished run had reached
    failed: list[dict] = field(default_factory=list)  # {_id, code, message}: rejected writes, left in place


def _has_outputs() -> dict:
    return {"$or": [{name: {"$exists": True}} for name in RESERVED]}


def _reserved_of(raw: RawBSONDocument) -> dict[str, Any]:
    return {name: raw[name] for name in RESERVED if name in raw}


def migrate_collection(db: Database, coll: str, to: str, *, page: int = PAGE,
                       progress: Callable[[int], None] | None = None, own: Database | None = None) -> Moved:
    """Move one collection's outputs into the store `to`; returns what was done."""
    if to not in STORES:
        raise ValueError(f"unknown store {to!r}: choose one of {', '.join(STORES)}")
    source = db.get_collection(coll, codec_options=RAW)
    own = db if own is None else own  # the daemon's own database (`outputs.database`)
    side = own.get_collection(SIDE_PREFIX + coll, codec_options=RAW)
    log = own[MIGRATIONS]
    record = log.find_one({"_id": coll}) or {}
    result = Moved(coll, to)
    last = None
    if record.get("to") == to and record.get("finished_at") is None and "last_id" in record:
        last = result.resumed_from = record["last_id"]
    now = dt.datetime.now(dt.timezone.utc)
    log.update_one({"_id": coll}, {"$set": {"to": to, "updated_at": now, "finished_at": None},
                                   "$setOnInsert": {"started_at": now}}, upsert=True)
    holder, step = (source, _to_collection) if to == "collection" else (side, _to_inline)
    query = _has_outputs() if to == "collection" else {}
    skipped: list[Any] = []  # rejected ids: stay where they are and are not fetched again
    restarts_at = None
    while True:
        bound = {"_id": {"$gt": last}} if last is not None else {}
        extra = {"_id": {"$nin": skipped}} if skipped else {}
        filters = [f for f in (query, bound, extra) if f]
        where = {"$and": filters} if len(filters) > 1 else (filters[0] if filters else {})
        docs = list(holder.find(where, {name: 1 for name in RESERVED}).sort("_id", 1).limit(page))
        docs = _one_bracket(docs) if docs else docs
        if not docs:
            if last is None:
                break
            # `$gt` compares within one BSON type only: look once more from the start for what is left
            # (other `_id` types, or documents inserted before `last` meanwhile)
            last = None
            continue
        if last is None:
            if restarts_at is not None and restarts_at == docs[0]["_id"]:
                raise RuntimeError(f"{coll}: no progress at _id {restarts_at!r}; rerun after checking the errors")
            restarts_at = docs[0]["_id"]
        failed = step(source, side, docs, result)
        skipped += [f["_id"] for f in failed]
        last = docs[-1]["_id"]
        log.update_one({"_id": coll}, {"$set": {"last_id": last, "updated_at": dt.datetime.now(dt.timezone.utc)},
                                       "$inc": {"moved": len(docs) - len(failed)}})
        if progress is not None:
            progress(len(docs))
    log.update_one({"_id": coll}, {"$set": {"finished_at": dt.datetime.now(dt.timezone.utc),
                                            "failed": len(result.failed)},
                                   "$unset": {"last_id": ""}})
    return result


def _to_collection(source: Collection, side: Collection, docs: list, result: Moved) -> list[dict]:
    """Copy a page of inline outputs to the side collection, then remove them from the sources."""
    side.bulk_write([ReplaceOne({"_id": d["_id"]}, _reserved_of(d), upsert=True) for d in docs], ordered=False)
    first, last = docs[0]["_id"], docs[-1]["_id"]
    source.update_many({"$and": [{"_id": {"$gte": first, "$lte": last}}, _has_outputs()]},
                       {"$unset": {name: "" for name in RESERVED}})
    result.moved += len(docs)
    return []


def _to_inline(source: Collection, side: Collection, docs: list, result: Moved) -> list[dict]:
    """Set a page of side outputs into the source documents, then delete those side documents."""
    ops = [UpdateOne({"_id": d["_id"]}, {"$set": _reserved_of(d)}) for d in docs]
    failed: list[dict] = []
    try:
        matched = source.bulk_write(ops, ordered=False).matched_count
    except BulkWriteError as exc:
        matched = exc.details.get("nMatched", 0)
        for error in exc.details.get("writeErrors", []):
            failed.append({"_id": docs[error["index"]]["_id"], "code": error.get("code"),
                           "message": error.get("errmsg", "write failed")})
    result.dropped += len(docs) - len(failed) - matched  # the source document is gone: nothing to keep
    keep = [f["_id"] for f in failed]
    side.delete_many({"_id": {"$gte": docs[0]["_id"], "$lte": docs[-1]["_id"], **({"$nin": keep} if keep else {})}})
    result.moved += matched
    result.failed += failed
    return failed


def _bracket(value: Any) -> str:
    """MongoDB compares `_id`s with $gt/$lte only within one type bracket (all numbers are one)."""
    return "number" if isinstance(value, (int, float, Decimal128)) else type(value).__name__


def _one_bracket(docs: list) -> list:
    """A page whose `_id`s all share the first one's bracket, so a range covers exactly the page."""
    first = _bracket(docs[0]["_id"])
    return [d for d in docs if _bracket(d["_id"]) == first] if _bracket(docs[-1]["_id"]) != first else docs


def pending(db: Database, coll: str, to: str, own: Database | None = None) -> int:
    """How many documents still hold outputs in the store we move away from (a bound for the bar)."""
    if to == "collection":
        return db[coll].count_documents(_has_outputs())
    return (db if own is None else own)[SIDE_PREFIX + coll].estimated_document_count()
