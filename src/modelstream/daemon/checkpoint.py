"""The resume point, kept in the database beside the data it describes.

Saved only after the outputs of every event before it are written (the caller's duty), so a
restart resumes at or before the first unfinished event: at-least-once, and writes are idempotent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.database import Database

from modelstream.daemon.documents import STATE_PREFIX
from modelstream.daemon.stores import DURABLE

CHECKPOINTS = STATE_PREFIX + "checkpoints"
STREAM = "changes"


class Checkpoints:
    def __init__(self, db: Database):
        self.collection = db.get_collection(CHECKPOINTS, write_concern=DURABLE)

    def load(self) -> dict | None:
        doc = self.collection.find_one({"_id": STREAM})
        return doc["token"] if doc else None

    def save(self, token: dict[str, Any]) -> None:
        self.collection.update_one(
            {"_id": STREAM},
            {"$set": {"token": token, "saved_at": dt.datetime.now(dt.timezone.utc)}},
            upsert=True,
        )

    def clear(self) -> None:
        self.collection.delete_one({"_id": STREAM})
