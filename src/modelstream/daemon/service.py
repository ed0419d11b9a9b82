"""The daemon as one object: open (validate, connect, load models) -> run in a thread -> close.

`open` does everything that can fail before any work starts, so a bad registry or an
unreachable database is a clear error at start, not a crash later.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import faiss
import pymongo
from prometheus_client.core import GaugeMetricFamily

from modelstream import log
from modelstream.content import reader_for
from modelstream.daemon.checkpoint import Checkpoints
from modelstream.daemon.documents import own_database, pages
from modelstream.daemon.embedded import EmbeddedServer
from modelstream.daemon.failures import FailureLog
from modelstream.daemon.follower import Follower
from modelstream.daemon.processor import Processor
from modelstream.daemon.stats import Stats
from modelstream.errors import ModelstreamError, ServerError
from modelstream.indexers import VectorIndex, index_for, load_snapshot, save_snapshot
from modelstream.registry import Model, Plan, load_models

logger = log.get("modelstream.daemon")

EMBEDDED_URI_FILE = "embedded.uri"


@dataclass
class Daemon:
    plan: Plan
    models: dict[str, Model]
    client: pymongo.MongoClient
    uri: str
    embedded: EmbeddedServer | None = None
    stats: Stats = field(default_factory=Stats)
    indexes: dict[str, VectorIndex] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # blue/green: while a reload recomputes an index's model, searches use the old index and models
    previous: dict[str, tuple[VectorIndex, dict[str, Model]]] = field(default_factory=dict)
    _reloading: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, plan: Plan) -> "Daemon":
        # One search is one query: FAISS's OpenMP threads only contend with the stream and the other
        # connections (each has its own thread). Measured: p50 8.8 ms -> 0.8 ms on a busy 2-core machine.
        faiss.omp_set_num_threads(1)
        registry = plan.registry
        models = load_models(registry, plan.versions)
        embedded = None
        uri = registry.database.uri
        if uri is None:
            embedded = EmbeddedServer(registry.data_dir / "db", registry.database.embedded_port).start()
            uri = embedded.uri
            (registry.data_dir / EMBEDDED_URI_FILE).write_text(uri)  # for `verify`, `backfill`, ... meanwhile
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        try:
            client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            if embedded:
                embedded.stop()
            raise ServerError(f"cannot reach the database at {uri}: {exc}",
                              hint="change streams need a replica set: check database.uri") from exc
        daemon = cls(plan=plan, models=models, client=client, uri=uri, embedded=embedded)
        daemon.indexes = daemon.load_indexes()
        return daemon

    # -- index snapshots: searchable at once after a restart; the start-up scan then corrects them ------

    def snapshot_path(self, name: str):
        return self.plan.registry.data_dir / "indexes" / f"{name}.snapshot"

    def _source_version(self, name: str) -> str:
        return self.plan.versions[self.plan.registry.indexes[name].source_model]

    def load_indexes(self) -> dict[str, VectorIndex]:
        indexes = {}
        for name, spec in self.plan.registry.indexes.items():
            indexes[name] = index_for(spec)
            load_snapshot(indexes[name], self.snapshot_path(name), self._source_version(name))
        return indexes

    def save_indexes(self) -> None:
        """Snapshot every index with the resume point it reflects (best effort: the index is derived)."""
        token = Checkpoints(self.own_db).load() if self.stats.connection == "connected" else None
        for name, index in self.indexes.items():
            try:
                size = save_snapshot(index, self.snapshot_path(name), self._source_version(name), token)
                logger.info("index snapshot written", index=name, vectors=len(index), bytes=size)
            except OSError as exc:
                logger.error("index snapshot failed", index=name, error=str(exc), hint="check data_dir's disk")

    def _snapshot_timer(self, stop: threading.Event) -> None:
        """Snapshots until `stop`: the event of the run that started it (a reload starts a new run and timer)."""
        interval = self.plan.registry.snapshot_every_s
        while interval > 0 and not stop.wait(interval):
            self.save_indexes()

    def __post_init__(self) -> None:
        self.stats.registry.register(_IndexCollector(self))

    @property
    def db(self):
        return self.client[self.plan.registry.database.name]

    @property
    def own_db(self):
        """The daemon's own collections: checkpoints, errors, side outputs."""
        return own_database(self.db, self.plan.registry)

    def build(self) -> Follower:
        processor = Processor(self.db, self.plan, self.models, self.indexes, FailureLog(self.own_db), self.stats)
        return Follower(self.db, processor, Checkpoints(self.own_db), self.stats)


    def start(self) -> None:
        self.follower = self.build()
        self.thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self.thread.start()
        threading.Thread(target=self._snapshot_timer, args=(self.stop_event,), name="snapshots",
                         daemon=True).start()

    def reload(self, plan: Plan) -> bool:
        """Swap in a validated registry: stop the follower after its batch, load the new models, restart.

        The new plan's versions decide what is recomputed (a changed model and its downstream);
        unchanged outputs are kept and their vectors reloaded by the start-up scan.
        Returns False (and changes nothing) when the database or the API would change: restart for those.
        """
        old = self.plan.registry
        new = plan.registry
        if (new.database, new.api, new.data_dir) != (old.database, old.api, old.data_dir):
            logger.error("reload refused: database, api or data_dir changed", hint="restart the daemon for those")
            return False
        models = load_models(new, plan.versions)  # may raise ConfigErrors: nothing has changed yet
        reader_for(new)  # user types import now, for the same reason
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
        self.save_indexes()
        changed = {name for name, spec in new.indexes.items() if name in self.indexes
                   and old.indexes[name].source_model in self.plan.versions
                   and self.plan.versions[old.indexes[name].source_model] != plan.versions[spec.source_model]}
        self.previous = {name: (self.indexes[name], self.models) for name in changed}
        self.plan, self.models = plan, models
        self.indexes = self.load_indexes()
        self.stop_event = threading.Event()
        self.stats.phase = "reloading"
        self.start()
        if changed:
            job = self.stats.job("recompute", indexes=sorted(changed))
            threading.Thread(target=self._switch_when_ready, args=(job,), name="blue-green", daemon=True).start()
        logger.info("registry reloaded", models=list(models), indexes=list(self.indexes))
        return True

    def reload_file(self) -> bool:
        """Re-read the registry file and reload (SIGHUP, the `reload` op, a training applied).

        Validated first: a bad file raises ConfigErrors and changes nothing. One reload at a time.
        """
        from modelstream import registry

        with self._reloading:
            return self.reload(registry.load(self.plan.registry.path))

    def request_reload(self) -> dict:
        """The `reload` op: validate now (errors go back to the caller), reload in the background."""
        from modelstream import registry

        registry.load(self.plan.registry.path)
        job = self.stats.job("reload", registry=str(self.plan.registry.path))
        threading.Thread(target=self._reload_job, args=(job,), name="reload", daemon=True).start()
        return job

    def _reload_job(self, job: dict) -> None:
        try:
            job["state"] = "done" if self.reload_file() else "refused: database, api or data_dir changed"
        except Exception as exc:  # noqa: BLE001 - reported in status; the running registry stays in force
            job["state"] = f"failed: {type(exc).__name__}: {exc}"
            logger.error("reload rejected: the running registry stays in force", error=str(exc))

    def train(self, name: str, apply: bool) -> dict:
        """Run a registry training in the background (`modelstream train NAME --daemon`); with `apply`,
        write the best weights into the registry file and reload, so the outputs recompute and the index
        switches when ready. One training at a time: they compete for the same CPU as the stream."""
        from modelstream.training import jobs

        jobs.training_spec(self.plan, name)  # unknown name: an error for the caller, now
        if any(j["kind"] == "train" and j["state"] in ("running", "reloading") for j in self.stats.jobs):
            raise ModelstreamError("a training is running already", hint="follow it with `modelstream status`")
        job = self.stats.job("train", training=name, apply=apply)
        threading.Thread(target=self._train_job, args=(job, name, apply), name="train", daemon=True).start()
        return job

    def _train_job(self, job: dict, name: str, apply: bool) -> None:
        from modelstream.training import jobs

        try:
            record = jobs.train(self.db, self.plan, name, progress=False,
                                echo=lambda message: logger.info(message, training=name))
            job.update(record=str(record["_id"]), metrics=record["metric_names"],
                       before=record["before"]["values"], best=record["best"]["values"],
                       best_iteration=record["best"]["iteration"], iterations=record["iterations"],
                       weights=[f["path"] for f in record["weight_files"]], plots=record["plots"])
            if apply and record["weight_files"]:
                jobs.apply_weights(self.plan, record["weight_files"])
                job["state"] = "reloading"
                if not self.reload_file():
                    raise ModelstreamError("the registry changed its database, api or data_dir: restart the daemon")
            job["state"] = "done"
            logger.info("training done", training=name, best=job["best"], applied=apply)
        except Exception as exc:  # noqa: BLE001 - reported in status, the daemon goes on
            job["state"] = f"failed: {type(exc).__name__}: {exc}"
            logger.exception("training failed", training=name)

    def _switch_when_ready(self, job: dict) -> None:
        """Serve the old index until the new outputs are complete (the start-up scan is done), then switch."""
        follower = self.follower
        while not follower.scanned.wait(0.5):
            if self.stop_event.is_set():
                return
        self.previous = {}
        job["state"] = "done"
        logger.info("recomputed indexes now serve searches", indexes=job["indexes"])

    def searchable(self, name: str) -> tuple[VectorIndex, dict[str, Model]] | None:
        """The index a search should use, with the models that embed its queries."""
        if name in self.previous:
            return self.previous[name]
        return (self.indexes[name], self.models) if name in self.indexes else None

    def refresh(self, model: str) -> dict:
        """Recompute one model and everything downstream for every document, in the background."""
        from modelstream.registry import graph

        registry = self.plan.registry
        names = frozenset(n for n in graph.downstream_of(registry.models, [model]) if registry.models[n].active)
        collection = registry.models[model].collection
        job = self.stats.job("refresh", models=sorted(names), collection=collection, done=0,
                             total=self.db[collection].estimated_document_count())
        threading.Thread(target=self._refresh, args=(collection, names, job, self.stop_event), name="refresh",
                         daemon=True).start()
        return job

    def _refresh(self, collection: str, names: frozenset[str], job: dict, stop: threading.Event) -> None:
        """Stops with the run that started it: after a reload, the new plan's versions decide instead."""
        processor = self.follower.processor
        try:
            for page in pages(self.db[collection]):
                processor.process(collection, page, [], force=names)
                job["done"] += len(page)
                if stop.is_set():
                    job["state"] = "stopped"
                    return
            job["state"] = "done"
        except Exception as exc:  # noqa: BLE001 - reported in status, the daemon goes on
            job["state"] = f"failed: {type(exc).__name__}: {exc}"
            logger.exception("refresh failed", models=sorted(names))

    def _run(self) -> None:
        try:
            self.follower.run(self.stop_event)
        except Exception as exc:  # noqa: BLE001 - the daemon must say why it stopped
            self.stats.phase = "failed"
            self.stats.error(f"{type(exc).__name__}: {exc}")
            logger.exception("the follower stopped", error=self.stats.last_error)

    def status(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["database"] = {"uri": self.uri, "name": self.plan.registry.database.name,
                            "embedded": self.embedded is not None}
        snap["models"] = self._model_status(snap["models"])
        snap["indexes"] = {name: {"size": len(ix), "dim": ix.dim, "measure": ix.measure, "bytes": ix.nbytes()}
                           for name, ix in self.indexes.items()}
        connected = self.stats.connection == "connected"
        snap["resume_point"] = self._from_database(lambda: Checkpoints(self.own_db).load()) if connected else None
        snap["last_failure"] = self._from_database(self._last_failure) if connected else None
        snap["last_error"], snap["last_error_at"] = _newest_error(snap["last_error"], snap["last_error_at"],
                                                                  snap["last_failure"])
        return snap

    def _model_status(self, counted: dict[str, dict]) -> dict[str, dict]:
        """Every model of the registry (counted or not yet) with its version; a model a reload removed keeps
        its counts, with version null."""
        models = {}
        for name, spec in self.plan.registry.models.items():
            counts = counted.get(name, {"done": 0, "failed": 0, "in_progress": 0})
            models[name] = {**counts, "version": self.plan.versions[name], "active": spec.active,
                            "collection": spec.collection}
        for name, counts in counted.items():
            models.setdefault(name, {**counts, "version": None, "active": False, "collection": None})
        return models

    def _last_failure(self) -> dict | None:
        """The newest entry of the errors collection: the last document a model could not process (kept
        across restarts; gone once the document succeeds or `retry` takes it)."""
        for entry in FailureLog(self.own_db).list(limit=1):
            key = entry["_id"]
            return {"collection": key["collection"], "model": key["model"], "_id": key["doc"],
                    "error": entry.get("error"), "hint": entry.get("hint"), "attempts": entry.get("attempts"),
                    "at": entry.get("last_at")}
        return None

    def _from_database(self, read):
        """Status must answer while the database is going away: what cannot be read now is null."""
        try:
            return read()
        except pymongo.errors.PyMongoError as exc:
            logger.warning("status: database read failed", error=str(exc)[:300])
            return None

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish the batch in hand (it checkpoints), then release everything."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.save_indexes()
        self.client.close()
        if self.embedded is not None:
            (self.plan.registry.data_dir / EMBEDDED_URI_FILE).unlink(missing_ok=True)
            self.embedded.stop()


def _newest_error(daemon_error: str | None, daemon_error_at: float | None,
                  failure: dict | None) -> tuple[str | None, float | None]:
    """`last_error` and its time: the daemon's own (connection, follower) or the last document failure,
    whichever is newer."""
    if failure is None or failure.get("at") is None:
        return daemon_error, daemon_error_at
    failed_at = failure["at"].timestamp()
    if daemon_error is not None and (daemon_error_at or 0) > failed_at:
        return daemon_error, daemon_error_at
    return (f"model {failure['model']} could not process {failure['collection']} _id {failure['_id']}: "
            f"{failure['error']}"), failed_at


class _IndexCollector:
    """Index sizes read at scrape time, so a reload's new indexes show up without re-registering."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self):
        size = GaugeMetricFamily("modelstream_index_vectors", "Vectors in each index", labels=["index"])
        nbytes = GaugeMetricFamily("modelstream_index_bytes", "Vector bytes held by each index", labels=["index"])
        for name, index in self.daemon.indexes.items():
            size.add_metric([name], len(index))
            nbytes.add_metric([name], index.nbytes())
        yield size
        yield nbytes


@contextlib.contextmanager
def database(plan: Plan):
    """The registry's database for one-off commands: its uri, a running daemon's embedded server, or a
    temporary embedded server of our own (never a second server on a running daemon's files)."""
    registry = plan.registry
    embedded = None
    uri = registry.database.uri
    if uri is None:
        uri_file = registry.data_dir / EMBEDDED_URI_FILE
        if uri_file.exists() and _reachable(uri_file.read_text().strip()):
            uri = uri_file.read_text().strip()
        else:
            embedded = EmbeddedServer(registry.data_dir / "db").start()
            uri = embedded.uri
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
    try:
        client.admin.command("ping")
        yield client[registry.database.name]
    except pymongo.errors.PyMongoError as exc:
        raise ServerError(f"cannot reach the database at {uri}: {exc}", hint="check database.uri") from exc
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()


def _reachable(uri: str) -> bool:
    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
            client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
