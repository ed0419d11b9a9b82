"""The errors collection: one entry per (collection, model, document) that could not be processed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from modelstream.daemon.documents import STATE_PREFIX

ERRORS = STATE_PREFIX + "errors"


class FailureLog:
    def __init__(self, db: Database):
        self.collection = db[ERRORS]

    def record(self, entries: list[dict[str, Any]]) -> None:
        """entries: collection, model, doc_id, error, attempts, hint (optional)."""
        if not entries:
            return
        now = dt.datetime.now(dt.timezone.utc)
        ops = []
        for e in entries:
            key = {"collection": e["collection"], "model": e["model"], "doc": e["doc_id"]}
            ops.append(UpdateOne(
                {"_id": key},
                {"$set": {"error": e["error"], "hint": e.get("hint"), "last_at": now},
                 "$inc": {"attempts": e.get("attempts", 1)}, "$setOnInsert": {"first_at": now}},
                upsert=True))
        self.collection.bulk_write(ops, ordered=False)

    def list(self, model: str | None = None, limit: int = 100) -> list[dict]:
        query = {"_id.model": model} if model else {}
        return list(self.collection.find(query).sort("last_at", -1).limit(limit))

    def count(self) -> int:
        return self.collection.count_documents({})
