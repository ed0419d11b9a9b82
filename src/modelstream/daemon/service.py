"""The daemon as one object: open (validate, connect, load models) -> run in a thread -> close.

`open` does everything that can fail before any work starts, so a bad registry or an
unreachable database is a clear error at start, not a crash later.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pymongo
from prometheus_client.core import GaugeMetricFamily

from modelstream import log
from modelstream.daemon.checkpoint import Checkpoints
from modelstream.daemon.embedded import EmbeddedServer
from modelstream.daemon.failures import FailureLog
from modelstream.daemon.follower import Follower
from modelstream.daemon.processor import Processor
from modelstream.daemon.stats import Stats
from modelstream.errors import ServerError
from modelstream.indexers import VectorIndex
from modelstream.registry import Model, Plan, load_models

logger = log.get("modelstream.daemon")


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

    @classmethod
    def open(cls, plan: Plan) -> "Daemon":
        registry = plan.registry
        models = load_models(registry, plan.versions)
        embedded = None
        uri = registry.database.uri
        if uri is None:
            embedded = EmbeddedServer(registry.data_dir / "db", registry.database.embedded_port).start()
            uri = embedded.uri
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        try:
            client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            if embedded:
                embedded.stop()
            raise ServerError(f"cannot reach the database at {uri}: {exc}",
                              hint="change streams need a replica set: check database.uri") from exc
        indexes = {name: VectorIndex(name, spec.measure, spec.type) for name, spec in registry.indexes.items()}
        return cls(plan=plan, models=models, client=client, uri=uri, embedded=embedded, indexes=indexes)

    def __post_init__(self) -> None:
        self.stats.registry.register(_IndexCollector(self))

    @property
    def db(self):
        return self.client[self.plan.registry.database.name]

    def build(self) -> Follower:
        processor = Processor(self.db, self.plan, self.models, self.indexes, FailureLog(self.db), self.stats)
        return Follower(self.db, processor, Checkpoints(self.db), self.stats)

    def start(self) -> None:
        self.follower = self.build()
        self.thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self.thread.start()

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
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
        self.plan, self.models = plan, models
        self.indexes = {name: VectorIndex(name, spec.measure, spec.type) for name, spec in new.indexes.items()}
        self.stop_event = threading.Event()
        self.stats.phase = "reloading"
        self.start()
        logger.info("registry reloaded", models=list(models), indexes=list(self.indexes))
        return True

    def _run(self) -> None:
        try:
            self.follower.run(self.stop_event)
        except Exception as exc:  # noqa: BLE001 - the daemon must say why it stopped
            self.stats.phase = "failed"
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("the follower stopped", error=self.stats.last_error)

    def status(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["database"] = {"uri": self.uri, "name": self.plan.registry.database.name,
                            "embedded": self.embedded is not None}
        snap["indexes"] = {name: {"size": len(ix), "dim": ix.dim, "measure": ix.measure, "bytes": ix.nbytes()}
                           for name, ix in self.indexes.items()}
        snap["resume_point"] = Checkpoints(self.db).load() if self.stats.connection == "connected" else None
        return snap

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish the batch in hand (it checkpoints), then release everything."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.client.close()
        if self.embedded is not None:
            self.embedded.stop()


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
