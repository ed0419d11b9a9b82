"""The errors collection: one entry per (collection, model, document) that could not be processed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from modelstream.daemon.documents import STATE_PREFIX, id_key

ERRORS = STATE_PREFIX + "errors"


class FailureLog:
    """Also remembers, per (collection, model, document), the input fingerprint that failed, so a rescan
    or a replay does not retry a poison document again and again: a changed input, or `retry`, does."""

    def __init__(self, db: Database):
        self.collection = db[ERRORS]
        self._failed: dict[tuple, str] | None = None  # loaded on first use

    def _known(self) -> dict[tuple, str]:
        if self._failed is None:
            self._failed = {(e["_id"]["collection"], e["_id"]["model"], id_key(e["_id"]["doc"])): e["fingerprint"]
                            for e in self.collection.find({"fingerprint": {"$exists": True}},
                                                          {"_id": 1, "fingerprint": 1})}
        return self._failed

    def failed_before(self, collection: str, model: str, doc_id: Any, fingerprint: str) -> bool:
        return self._known().get((collection, model, id_key(doc_id))) == fingerprint

    def resolved(self, collection: str, pairs: list[tuple[str, Any]]) -> None:
        """(model, doc_id) pairs just computed: their error entries no longer hold."""
        known = self._known()
        gone = [(m, d) for m, d in pairs if (collection, m, id_key(d)) in known]
        if gone:
            for m, d in gone:
                known.pop((collection, m, id_key(d)), None)
            self.collection.delete_many({"$or": [{"_id": {"collection": collection, "model": m, "doc": d}}
                                                 for m, d in gone]})

    def forget(self, query: dict) -> list[dict]:
        """Drop entries (all, or matching `query`) so their documents are tried again; returns their ids."""
        entries = list(self.collection.find(query, {"_id": 1}))
        self.collection.delete_many({"_id": {"$in": [e["_id"] for e in entries]}})
        known = self._known()
        for e in entries:
            known.pop((e["_id"]["collection"], e["_id"]["model"], id_key(e["_id"]["doc"])), None)
        return entries

    def record(self, entries: list[dict[str, Any]]) -> None:
        """entries: collection, model, doc_id, error, attempts, hint (optional)."""
        if not entries:
            return
        now = dt.datetime.now(dt.timezone.utc)
        ops = []
        for e in entries:
            key = {"collection": e["collection"], "model": e["model"], "doc": e["doc_id"]}
            if e.get("fingerprint"):
                self._known()[(e["collection"], e["model"], id_key(e["doc_id"]))] = e["fingerprint"]
            ops.append(UpdateOne(
                {"_id": key},
                {"$set": {"error": e["error"], "hint": e.get("hint"), "last_at": now,
                          "fingerprint": e.get("fingerprint")},
                 "$inc": {"attempts": e.get("attempts", 1)}, "$setOnInsert": {"first_at": now}},
                upsert=True))
        self.collection.bulk_write(ops, ordered=False)

    def list(self, model: str | None = None, limit: int = 100) -> list[dict]:
        query = {"_id.model": model} if model else {}
        return list(self.collection.find(query).sort("last_at", -1).limit(limit))

    def count(self) -> int:
        return self.collection.count_documents({})
