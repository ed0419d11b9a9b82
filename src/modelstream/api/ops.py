"""What each request op does. Reads daemon state; never changes it except through the models."""

from __future__ import annotations

from typing import Any

import time

import numpy as np
from bson import Binary
from prometheus_client import generate_latest

from modelstream.api.filtered_search import FilteredSearch
from modelstream.content import ContentError, reader_for, to_stored, vector_of
from modelstream.daemon.documents import id_key
from modelstream.daemon.service import Daemon
from modelstream.errors import ApiError, ModelstreamError
from modelstream.registry import BASE_KEY

MAX_N = 10_000


class Operations:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.filtered = FilteredSearch()
        self.handlers = {"ping": self.ping, "search": self.search, "apply": self.apply,
                         "models": self.models, "status": self.status,
                         "metrics": self.metrics, "retry": self.retry, "refresh": self.refresh,
                         "reload": self.reload, "train": self.train}

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = self.handlers.get(op)
        if handler is None:
            raise ApiError("bad_request", f"unknown op {op!r}", hint=f"ops: {', '.join(sorted(self.handlers))}")
        return handler(request)

    def ping(self, request: dict) -> dict:
        return {"pong": True}

    def refresh(self, request: dict) -> dict:
        """Recompute a model and its downstream for every document, in the background (see `status` jobs)."""
        name = request.get("model")
        if name not in self.daemon.plan.registry.models or not self.daemon.plan.registry.models[name].active:
            raise ApiError("not_found", f"no active model {name!r}",
                           hint=f"active models: {', '.join(m.name for m in self.daemon.plan.models_of_all())}")
        return {"job": self.daemon.refresh(name)}

    def reload(self, request: dict) -> dict:
        """Re-read the registry file, as SIGHUP does: validated now (errors come back), applied in the background."""
        try:
            return {"job": self.daemon.request_reload()}
        except ModelstreamError as exc:
            raise ApiError("bad_registry", str(exc), hint="fix the file; the running registry stays in force") \
                from exc

    def train(self, request: dict) -> dict:
        """Run a registry training in the daemon's background; `apply: true` serves the best weights after."""
        name = request.get("training")
        if not isinstance(name, str):
            raise ApiError("bad_request", "train needs `training`, the name of one of the registry's trainings")
        try:
            return {"job": self.daemon.train(name, bool(request.get("apply", False)))}
        except ModelstreamError as exc:
            raise ApiError("bad_request", exc.message, hint=exc.hint) from exc

    def retry(self, request: dict) -> dict:
        """Process the documents in the errors collection again (all, or one model's), now."""
        from modelstream.daemon.failures import ERRORS

        query = {"_id.model": request["model"]} if request.get("model") else {}
        processor = self.daemon.follower.processor
        entries = processor.failures.forget(query)
        by_collection: dict[str, list] = {}
        for e in entries:
            by_collection.setdefault(e["_id"]["collection"], []).append(e["_id"]["doc"])
        for coll, ids in by_collection.items():
            if coll in processor.stores:
                for start in range(0, len(ids), 256):
                    docs = list(self.daemon.db[coll].find({"_id": {"$in": ids[start:start + 256]}}))
                    processor.process(coll, docs, [])
        failed = self.daemon.own_db[ERRORS].count_documents(query)
        return {"retried": len(entries), "failed": failed}

    def metrics(self, request: dict) -> dict:
        """Prometheus text exposition, the same as the HTTP /metrics endpoint."""
        return {"metrics": generate_latest(self.daemon.stats.registry).decode()}

    def status(self, request: dict) -> dict:
        return {"status": self.daemon.status()}

    def models(self, request: dict) -> dict:
        registry = self.daemon.plan.registry
        stats = self.daemon.stats.snapshot()["models"]
        return {"models": [
            {"name": m.name, "active": m.active, "collection": m.collection, "key": m.key,
             "features": m.features, "version": self.daemon.plan.versions[m.name],
             "done": stats.get(m.name, {}).get("done", 0), "failed": stats.get(m.name, {}).get("failed", 0)}
            for m in registry.models.values()]}

    def apply(self, request: dict) -> dict:
        name = request.get("model")
        model = self.daemon.models.get(name)
        if model is None:
            raise ApiError("not_found", f"unknown model {name!r}", hint=f"models: {', '.join(self.daemon.models)}")
        document = request.get("document")
        if not isinstance(document, dict):
            raise ApiError("bad_request", "apply needs `document`, an object with the model's key field")
        return {"output": to_stored(self._run(model, document), "array")}

    def _run(self, model, document: dict) -> Any:
        spec = model.spec
        if spec.key == BASE_KEY:
            value = document
        elif spec.key in document:
            try:  # `_content` (Extended JSON binary bytes, or a url) decodes as a stored document's would
                value = reader_for(self.daemon.plan.registry).decode(document[spec.key])
            except ContentError as exc:
                raise ApiError("bad_request", f"{spec.key}: {exc}") from exc
        else:
            raise ApiError("bad_request", f"model {spec.name} reads field {spec.key!r}, absent from the document")
        try:
            return model.predict([value])[0]
        except Exception as exc:  # noqa: BLE001 - a model error is the caller's bad input, not ours
            raise ApiError("model_error", f"model {spec.name} failed: {type(exc).__name__}: {exc}") from exc

    # -- search ------------------------------------------------------------------------------------

    def search(self, request: dict) -> dict:
        started = time.perf_counter()
        try:
            return self._search(request)
        finally:
            self.daemon.stats.m_search.observe(time.perf_counter() - started)

    def _search(self, request: dict) -> dict:
        index_name = request.get("index")
        if index_name is None and len(self.daemon.indexes) == 1:
            index_name = next(iter(self.daemon.indexes))
        found = self.daemon.searchable(index_name)
        if found is None:
            raise ApiError("not_found", f"unknown index {index_name!r}",
                           hint=f"indexes: {', '.join(self.daemon.indexes) or 'none'}")
        index, models = found
        n = request.get("n", 10)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_N:
            raise ApiError("bad_request", f"n must be an integer from 1 to {MAX_N}, not {n!r}")
        spec = self.daemon.plan.registry.indexes[index_name]
        vector, exclude = self._query_vector(spec, index, models, request)
        index.check_dim(vector)
        query = request.get("filter")
        project = request.get("project")
        # the user's documents, whatever the output store: filters and projections are over their fields
        # (looked up only when needed: a plain search should not build pymongo objects)
        collection = self.daemon.db[self.daemon.plan.registry.models[spec.source_model].collection] \
            if query is not None or project else None
        response: dict[str, Any] = {}
        if query is None:
            hits = index.search(vector, n + len(exclude))
            hits = [(doc_id, score) for doc_id, score in hits if id_key(doc_id) not in exclude][:n]
        else:
            if not isinstance(query, dict):
                raise ApiError("bad_request", "filter must be a MongoDB query object",
                               hint="e.g. \"filter\": {\"year\": {\"$gte\": 2010}}")
            filtered = self.filtered.search(index, collection, vector, n, query, exclude)
            hits, response["filter_strategy"] = filtered.hits, filtered.strategy
        results = [{"_id": doc_id, "score": score} for doc_id, score in hits]
        if project:
            self._project(collection, results, project)
        return {"results": results, "measure": index.measure, **response}

    def _query_vector(self, spec, index, models, request: dict) -> tuple[np.ndarray, set]:
        if "vector" in request:
            return _request_vector(request["vector"]), set()
        like = request.get("like")
        if not isinstance(like, dict) or not like:
            raise ApiError("bad_request", "search needs `like` ({\"_id\": ...} or {field: value}) or `vector`")
        if "_id" in like:
            vector = index.vector_of(like["_id"])
            if vector is None:
                raise ApiError("not_found", f"no vector in index {spec.name} for _id {like['_id']!r}",
                               hint="the document may not exist, or not be processed yet")
            return vector, {id_key(like["_id"])}
        for name in spec.models:
            model = models[name]
            if model.spec.key in like or model.spec.key == BASE_KEY:
                vector = vector_of(to_stored(self._run(model, like)))
                if vector is None:
                    raise ApiError("model_error", f"model {name} did not return a vector")
                return vector, set()
        keys = [models[m].spec.key for m in spec.models]
        raise ApiError("bad_request", f"no model of index {spec.name} reads {', '.join(map(repr, like))}",
                       hint=f"query fields of this index: {', '.join(keys)}")

    def _project(self, collection, results: list[dict], project: Any) -> None:
        fields = project if isinstance(project, list) else list(project)
        by_id = {id_key(d["_id"]): d for d in collection.find(
            {"_id": {"$in": [r["_id"] for r in results]}}, {f: 1 for f in fields})}
        for result in results:
            doc = by_id.get(id_key(result["_id"]), {})
            result["document"] = {k: v for k, v in doc.items() if k != "_id"}


def _request_vector(value: Any) -> np.ndarray:
    """A list of numbers, or a BSON float32 binary vector (Extended JSON `$binary`, subType 09).

    The binary form is what a fast client sends: decoding 384 floats from JSON text costs the
    server more than the search itself.
    """
    if isinstance(value, Binary):
        vector = vector_of(value)
        if vector is None:
            raise ApiError("bad_request", f"vector as binary must be a float32 vector (subType 09), not subType "
                                          f"{value.subtype}", hint="bson.Binary.from_vector(values, "
                                                                   "BinaryVectorDtype.FLOAT32)")
        return vector
    try:
        return np.asarray(value, dtype=np.float32).ravel()
    except (TypeError, ValueError) as exc:
        raise ApiError("bad_request", f"vector must be a list of numbers: {exc}") from exc
