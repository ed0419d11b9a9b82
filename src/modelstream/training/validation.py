"""Validation sets and `modelstream validate`.

A validation set is a frozen sample of the valid fold (see folds.py): `modelstream validation create
NAME` copies the sampled documents' `_id`s, the fields needed (`--split KEY:TARGET`: those two;
otherwise the whole user document) and their stored `_outputs` and fingerprints into the collection
`_modelstream.validation.<NAME>`, one record per document:

    {_id: <source _id>, fields: {...}, outputs: {...}, fingerprints: {...}}

and describes it in `_modelstream.validation_sets` (collection, size, split, ratio, the model
versions of the outputs it froze). The user's documents are only read. Metrics of every
`validate` and training validation are appended to `_modelstream.metrics`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.database import Database

from modelstream.daemon.documents import FINGERPRINTS, STATE_PREFIX, id_key
from modelstream.errors import ModelstreamError
from modelstream.registry import Model, Plan, load_models
from modelstream.training import folds, measures, metrics
from modelstream.training.inputs import MISSING, Inputs, own_database, records

SET_PREFIX = STATE_PREFIX + "validation."
SETS = STATE_PREFIX + "validation_sets"
METRICS = STATE_PREFIX + "metrics"
INSERT_CHUNK = 256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_set(db: Database, plan: Plan, name: str, collection: str, sample: int,
               split: tuple[str, str] | None = None, replace: bool = False, relevant_by: str | None = None) -> dict:
    """Freeze `sample` documents of the valid fold of `collection` (the same ones on every run).

    `relevant_by`: a field whose equal values make documents right answers for each other's queries in
    P@k (rendered scenes with the same attributes, say); by default only a query's own document is.
    """
    own = own_database(db, plan.registry)
    if own[SETS].find_one({"_id": name}) and not replace:
        raise ModelstreamError(f"validation set {name!r} exists", hint="pass --replace to make it again")
    ratio = plan.registry.validation.ratio
    candidates = []
    for doc in db[collection].find({}, {"_id": 1}):
        place = folds.position(doc["_id"])
        if place < ratio:
            candidates.append((place, doc["_id"]))
    candidates.sort(key=lambda c: c[0])
    chosen = [doc_id for _, doc_id in candidates[:sample]]
    if not chosen:
        raise ModelstreamError(f"no documents of {collection!r} are in the valid fold (ratio {ratio})",
                               hint="insert documents first, or raise `validation: {ratio: ...}`")
    wanted = {id_key(i) for i in chosen}
    frozen = []
    for record in records(db, plan, collection, {"_id": {"$in": chosen}}):
        if id_key(record["_id"]) not in wanted:
            continue
        fields = {k: v for k, v in record.items() if k not in ("_id", "_outputs", FINGERPRINTS)}
        if split:
            fields = {k: fields[k] for k in (*split, *([relevant_by] if relevant_by else [])) if k in fields}
        frozen.append({"_id": record["_id"], "fields": fields, "outputs": record.get("_outputs", {}),
                       "fingerprints": record.get(FINGERPRINTS, {})})
    target = own[SET_PREFIX + name]
    target.drop()
    for start in range(0, len(frozen), INSERT_CHUNK):
        target.insert_many(frozen[start:start + INSERT_CHUNK])
    meta = {"_id": name, "collection": collection, "sample": sample, "count": len(frozen),
            "split": {"key": split[0], "target": split[1]} if split else None, "ratio": ratio,
            "relevant_by": relevant_by,
            "valid_fold_size": len(candidates),
            "versions": _frozen_versions(plan, collection, frozen), "created": _now()}
    own[SETS].replace_one({"_id": name}, meta, upsert=True)
    return meta


def _frozen_versions(plan: Plan, collection: str, frozen: list[dict]) -> dict[str, str]:
    """The versions of the models whose outputs the set froze (to tell when they go stale)."""
    from modelstream.daemon.documents import get_path

    return {m.name: plan.versions[m.name] for m in plan.models_of(collection)
            if any(get_path({"_outputs": r["outputs"]}, m.output_path()) is not None for r in frozen)}


@dataclass
class ValidationSet:
    meta: dict
    records: list[dict]  # user fields, `_id`, `_outputs`, `_modelstream`: as a live record looks

    @property
    def ids(self) -> set:
        return {id_key(r["_id"]) for r in self.records}

    def stale_models(self, plan: Plan, read_by: list[str] | None = None) -> list[str]:
        """Models whose version changed since the set froze their outputs (only those `read_by` the given
        models through `features`, at any depth, when given)."""
        wanted = None if read_by is None else _upstream_closure(plan, read_by)
        return sorted(n for n, v in self.meta.get("versions", {}).items()
                      if n in plan.versions and plan.versions[n] != v and (wanted is None or n in wanted))


def _upstream_closure(plan: Plan, names: list[str]) -> set[str]:
    from modelstream.registry.graph import upstream_of

    seen: set[str] = set()
    todo = [u for n in names for u in upstream_of(plan.registry.models[n])]
    while todo:
        name = todo.pop()
        if name not in seen and name in plan.registry.models:
            seen.add(name)
            todo.extend(upstream_of(plan.registry.models[name]))
    return seen


def load_set(db: Database, plan: Plan, name: str) -> ValidationSet:
    own = own_database(db, plan.registry)
    meta = own[SETS].find_one({"_id": name})
    if meta is None:
        known = [m["_id"] for m in own[SETS].find({}, {"_id": 1})]
        raise ModelstreamError(f"no validation set {name!r}" + (f" (known: {', '.join(known)})" if known else ""),
                               hint=f"create it: modelstream validation create {name} -c REGISTRY "
                                    "--collection C --sample N")
    found = []
    for r in own[SET_PREFIX + name].find({}).sort("_id", 1):
        found.append({**r["fields"], "_id": r["_id"], "_outputs": r.get("outputs", {}),
                      FINGERPRINTS: r.get("fingerprints", {})})
    return ValidationSet(meta, found)


def list_sets(db: Database, plan: Plan) -> list[dict]:
    return list(own_database(db, plan.registry)[SETS].find({}).sort("_id", 1))


# -- metrics over a validation set -----------------------------------------------------------------


def retrieval_scores(doc_vectors, query_vectors, measure: str | Callable, fns: dict[str, Callable],
                     relevant: list[frozenset] | None = None) -> dict[str, float]:
    """Query i should find document i (or any of `relevant[i]`, positions of the documents that answer it):
    each metric gets (ranked document positions, i or that set), averaged."""
    import torch

    similarity = measures.resolve(measure)(doc_vectors, query_vectors).T  # queries x documents
    order = torch.argsort(similarity, dim=1, descending=True).tolist()
    truths = relevant if relevant is not None else range(len(order))
    return {name: metrics.mean([fn(ranked, truth) for truth, ranked in zip(truths, order)])
            for name, fn in fns.items()}


def relevance(vset: ValidationSet, kept: list[dict]) -> list[frozenset] | None:
    """For each kept record, the positions of the kept records with its `relevant_by` value (itself included)."""
    from modelstream.daemon.documents import get_path

    field = vset.meta.get("relevant_by")
    if not field:
        return None
    keys = [repr(get_path(r, field)) for r in kept]
    groups: dict[str, set[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, set()).add(i)
    return [frozenset(groups[key]) for key in keys]


def prediction_scores(predictions: list, truths: list, fns: dict[str, Callable]) -> dict[str, float]:
    return {name: metrics.mean([fn(p, t) for p, t in zip(predictions, truths)]) for name, fn in fns.items()}


def metric_fns(names: list[str], plan: Plan) -> dict[str, Callable]:
    search = [plan.registry.folder.resolve(), Path.cwd()]
    return {name: metrics.resolve(name, search) for name in names}


def paired_inputs(specs: list, vset: ValidationSet, inputs: Inputs,
                  kept: list[dict] | None = None) -> tuple[list[list], int]:
    """For each model, the input of every record where all of them have one (those records appended to
    `kept`); and how many were skipped."""
    columns: list[list] = [[] for _ in specs]
    skipped = 0
    for record in vset.records:
        values = [inputs.value(spec, record, frozen=True) for spec in specs]
        if any(v is MISSING for v in values):
            skipped += 1
            continue
        for column, value in zip(columns, values):
            column.append(value)
        if kept is not None:
            kept.append(record)
    return columns, skipped


def vectors(model: Model, values: list, batch: int = 256):
    import numpy as np
    import torch

    out = []
    for start in range(0, len(values), batch):
        out.extend(model.predict(values[start:start + batch]))
    return torch.as_tensor(np.stack([np.asarray(_numpy(o), dtype=np.float32).ravel() for o in out]))


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def validate_index(db: Database, plan: Plan, index: str, set_name: str, metric_names: list[str],
                   query_model: str | None = None, models: dict[str, Model] | None = None,
                   record: bool = True) -> dict:
    """P@k (and other retrieval metrics) of finding each validation document by its query field."""
    spec = plan.registry.indexes.get(index)
    if spec is None:
        raise ModelstreamError(f"no index {index!r} in the registry",
                               hint=f"known: {', '.join(plan.registry.indexes) or 'none'}")
    if len(spec.models) < 2:
        raise ModelstreamError(f"index {index!r} has no query model to embed the query field",
                               hint="list a query model after the first model of the index")
    query = query_model or spec.models[1]
    if query not in spec.models[1:]:
        raise ModelstreamError(f"{query!r} is not a query model of index {index!r}",
                               hint=f"its query models: {', '.join(spec.models[1:])}")
    vset = load_set(db, plan, set_name)
    names = [spec.source_model, query]
    loaded = models or load_models(plan.registry, plan.versions, names)
    values = validate_pair(plan, vset, [loaded[n] for n in names], spec.measure, metric_fns(metric_names, plan))
    result = {"kind": "index", "index": index, "query_model": query, "validation_set": set_name,
              "measure": spec.measure, "metrics": values["metrics"], "count": values["count"],
              "skipped": values["skipped"], "versions": {n: plan.versions[n] for n in names},
              "stale_upstream": vset.stale_models(plan, read_by=names), "at": _now()}
    if record:  # metric names may be import paths (dots): stored as a list, not as keys
        own_database(db, plan.registry)[METRICS].insert_one(
            {**result, "metrics": [{"metric": k, "value": v} for k, v in result["metrics"].items()]})
    return result


def validate_pair(plan: Plan, vset: ValidationSet, pair: list[Model], measure: str | Callable,
                  fns: dict[str, Callable]) -> dict:
    inputs = Inputs(plan)
    kept: list[dict] = []
    (doc_values, query_values), skipped = paired_inputs([m.spec for m in pair], vset, inputs, kept)
    if not doc_values:
        raise ModelstreamError(f"no record of validation set {vset.meta['_id']!r} has inputs for both "
                               f"{pair[0].name!r} and {pair[1].name!r}",
                               hint="the set freezes stored outputs: run the daemon (or backfill) before "
                                    "creating it, and do not --split away a field the models read")
    scores = retrieval_scores(vectors(pair[0], doc_values), vectors(pair[1], query_values), measure, fns,
                              relevance(vset, kept))
    return {"metrics": scores, "count": len(doc_values), "skipped": skipped}
