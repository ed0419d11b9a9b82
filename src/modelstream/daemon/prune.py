"""Remove the outputs of models that are no longer in the registry (a reload leaves them until asked)."""

from __future__ import annotations

from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from modelstream.daemon.documents import FINGERPRINTS, OUTPUTS, own_database
from modelstream.daemon.stores import SIDE_PREFIX
from modelstream.registry import Plan

PAGE = 512


def _output_paths(outputs: Any, model: str, prefix: str = OUTPUTS) -> list[str]:
    """Every `_outputs.<key>.<model>` path in a document (keys may be dotted, so walk the tree)."""
    paths = []
    if isinstance(outputs, dict):
        for key, value in outputs.items():
            if key == model and prefix != OUTPUTS:
                paths.append(f"{prefix}.{key}")
            elif isinstance(value, dict):
                paths.extend(_output_paths(value, model, f"{prefix}.{key}"))
    return paths


def prune(db: Database, plan: Plan) -> dict[str, int]:
    """Unset outputs and fingerprints of unknown models, in both stores; returns documents changed per model."""
    known = set(plan.registry.models)
    removed: dict[str, int] = {}
    for coll in plan.registry.collections():
        for target in (db[coll], own_database(db, plan.registry)[SIDE_PREFIX + coll]):
            ops: list[UpdateOne] = []
            for doc in target.find({FINGERPRINTS: {"$exists": True}}, {OUTPUTS: 1, FINGERPRINTS: 1}):
                gone = [m for m in doc.get(FINGERPRINTS, {}) if m not in known]
                if not gone:
                    continue
                paths = [f"{FINGERPRINTS}.{m}" for m in gone]
                for m in gone:
                    paths += _output_paths(doc.get(OUTPUTS), m)
                    removed[m] = removed.get(m, 0) + 1
                ops.append(UpdateOne({"_id": doc["_id"]}, {"$unset": {p: "" for p in paths}}))
                if len(ops) >= PAGE:
                    target.bulk_write(ops, ordered=False)
                    ops = []
            if ops:
                target.bulk_write(ops, ordered=False)
    return removed
