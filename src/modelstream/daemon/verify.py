"""Compare the collection with its outputs: what is missing, stale, or orphaned. Read-only.

The same fingerprints the daemon writes decide: a document whose stored fingerprint for a model
differs from the fingerprint of its current fields is stale; one with none, while the model
applies to it, is missing (or failed: see the errors collection). In the `collection` store, a
side document whose source is gone is orphaned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pymongo.database import Database

from modelstream.daemon.documents import FINGERPRINTS, own_database, pages, fingerprint, get_path, id_key
from modelstream.daemon.failures import ERRORS
from modelstream.daemon.stores import store_for
from modelstream.registry import BASE_KEY, Plan



@dataclass
class ModelReport:
    model: str
    collection: str
    documents: int = 0  # documents the model applies to
    ok: int = 0
    missing: int = 0
    stale: int = 0
    failed: int = 0  # missing, with an entry in the errors collection
    examples: list = field(default_factory=list)


@dataclass
class Report:
    models: dict[str, ModelReport] = field(default_factory=dict)
    orphaned: dict[str, int] = field(default_factory=dict)  # collection -> side documents without a source

    @property
    def problems(self) -> int:
        return sum(m.missing + m.stale for m in self.models.values()) + sum(self.orphaned.values())


def verify(db: Database, plan: Plan, progress: Callable[[int], None] | None = None) -> Report:
    report = Report()
    for coll in plan.registry.collections():
        own = own_database(db, plan.registry)
        store = store_for(plan.registry.outputs.store_for(coll), db[coll], own)
        specs = plan.models_of(coll)
        for spec in specs:
            report.models[spec.name] = ModelReport(spec.name, coll)
        failed = {(e["_id"]["model"], id_key(e["_id"]["doc"]))
                  for e in own[ERRORS].find({"_id.collection": coll}, {"_id": 1})}
        seen = set()
        for page in pages(db[coll]):
            _check_page(db, plan, coll, store, specs, page, failed, report)
            seen.update(id_key(d["_id"]) for d in page)
            if progress:
                progress(len(page))
        side_ids = store.stored_ids()
        if side_ids is not None:
            report.orphaned[coll] = sum(1 for i in side_ids if id_key(i) not in seen)
    return report


def _check_page(db, plan, coll, store, specs, page, failed, report) -> None:
    if not page:
        return
    stored = store.stored(page)
    low, high = page[0]["_id"], page[-1]["_id"]
    for spec in specs:
        matching = None
        if spec.filter:
            query = {"$and": [{"_id": {"$gte": low, "$lte": high}}, spec.filter]}
            matching = {id_key(d["_id"]) for d in db[coll].find(query, {"_id": 1})}
        model_report = report.models[spec.name]
        for doc in page:
            key = id_key(doc["_id"])
            if matching is not None and key not in matching:
                continue
            if spec.key != BASE_KEY and spec.key not in spec.features and get_path(doc, spec.key) is None:
                continue
            model_report.documents += 1
            have = get_path(stored.get(key, {}), f"{FINGERPRINTS}.{spec.name}")
            want = fingerprint(plan.versions[spec.name], plan.roots[spec.name], doc)
            if have == want:
                model_report.ok += 1
            elif have is None:
                if (spec.name, key) in failed:
                    model_report.failed += 1
                else:
                    model_report.missing += 1
                    if len(model_report.examples) < 5:
                        model_report.examples.append(doc["_id"])
            else:
                model_report.stale += 1
                if len(model_report.examples) < 5:
                    model_report.examples.append(doc["_id"])
