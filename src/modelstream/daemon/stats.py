"""What the daemon counts, for `status` (a snapshot dict) and for Prometheus (one registry per daemon).

Counters are prometheus_client instruments, so `/metrics` and `status` can never disagree.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class Backlog:
    """Change events the daemon has received from the server but not yet applied and checkpointed.

    The server may hold more (written, not yet sent to us): counting those would mean reading the
    stream ahead or the oplog, neither cheap nor portable; `seconds_behind` speaks for them instead.
    """

    queued_batches: int = 0  # getMore results read ahead, waiting for the batch in hand to finish
    queued_events: int = 0  # the events in them (and in a read-ahead blocked on a full queue)
    in_hand: int = 0  # the batch being computed, written and checkpointed now
    buffered: int = 0  # received by the driver, not yet taken off the cursor
    oldest_in_hand: float | None = None  # cluster time (s) of the oldest event in hand: how long it has waited

    @property
    def events(self) -> int:
        return self.queued_events + self.in_hand + self.buffered


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.done: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.in_progress: dict[str, int] = defaultdict(int)
        self.events = 0
        self.batches = 0
        # Read live at every status/scrape, by whoever follows the stream now (a reload swaps the follower).
        self.backlog: Callable[[], Backlog] = Backlog
        self.last_event_time: float | None = None  # cluster time of the newest processed event
        self.last_batch_at: float | None = None
        self.idle = True
        self.phase = "starting"  # starting | scanning | streaming | retrying | reloading | stopped | failed
        self.connection = "connecting"
        self.retries = 0
        self.last_error: str | None = None  # the connection's, or why the follower stopped
        self.last_error_at: float | None = None
        self.scan_done = 0
        self.scan_total = 0
        self.jobs: list[dict[str, Any]] = []  # background work: refresh, blue/green reload, reload, train

        self.registry = CollectorRegistry()
        self.m_done = Counter("modelstream_documents_processed", "Outputs computed", ["model"], registry=self.registry)
        self.m_failed = Counter("modelstream_documents_failed", "Documents a model could not process", ["model"],
                                registry=self.registry)
        self.m_batch = Histogram("modelstream_model_batch_seconds", "Model batch latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.m_events = Counter("modelstream_events", "Change events processed", registry=self.registry)
        self.m_retries = Counter("modelstream_connection_retries", "Database connection retries",
                                 registry=self.registry)
        self.m_lag = Gauge("modelstream_lag_seconds",
                           "Seconds behind: the age of the oldest change in hand, or of the newest applied while "
                           "more are coming", registry=self.registry)
        self.m_lag.set_function(self.seconds_behind)
        self.m_lag_events = Gauge("modelstream_lag_events",
                                  "Change events received from the server, not yet applied and checkpointed",
                                  registry=self.registry)
        self.m_lag_events.set_function(lambda: self.backlog().events)
        self.m_queue = Gauge("modelstream_queue_batches", "Batches read ahead from the change stream, waiting",
                             registry=self.registry)
        self.m_queue.set_function(lambda: self.backlog().queued_batches)
        self.m_search = Histogram("modelstream_search_seconds", "Search latency through the socket API",
                                  buckets=LATENCY_BUCKETS, registry=self.registry)

    def add(self, counter: dict[str, int], model: str, n: int) -> None:
        with self._lock:
            counter[model] += n
        if counter is self.done:
            self.m_done.labels(model).inc(n)
        elif counter is self.failed:
            self.m_failed.labels(model).inc(n)

    def model_batch(self, model: str, seconds: float) -> None:
        self.m_batch.labels(model).observe(seconds)

    def retry(self, error: str) -> None:
        with self._lock:
            self.retries += 1
        self.error(error)
        self.m_retries.inc()

    def error(self, error: str) -> None:
        """A problem of the daemon itself (not of one document: those are in the errors collection)."""
        with self._lock:
            self.last_error, self.last_error_at = error, time.time()

    def batch(self, events: int, last_event_time: float | None) -> None:
        with self._lock:
            self.events += events
            self.batches += 1
            self.last_batch_at = time.time()
            if last_event_time is not None:
                self.last_event_time = last_event_time
        self.m_events.inc(events)

    def seconds_behind(self, backlog: Backlog | None = None) -> float:
        """0 when idle. Otherwise the longer of: since the newest applied change was written (more are
        coming), and since the oldest change in hand was written (counts before the first batch is done).
        Cluster times have one-second resolution."""
        now = time.time()
        oldest = (backlog if backlog is not None else self.backlog()).oldest_in_hand
        behind = 0.0 if oldest is None else now - oldest
        if not self.idle and self.last_event_time is not None:
            behind = max(behind, now - self.last_event_time)
        return max(0.0, behind)

    def job(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A background job, listed in `status` (the newest 20) and updated in place as it runs."""
        with self._lock:
            job = {"id": len(self.jobs) + 1, "kind": kind, "state": "running", **fields}
            self.jobs.append(job)
        return job

    def snapshot(self) -> dict[str, Any]:
        backlog = self.backlog()  # outside our lock: it takes the follower's
        with self._lock:
            return {
                "phase": self.phase,
                "uptime_s": round(time.time() - self.started, 3),
                "connection": self.connection,
                "retries": self.retries,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
                "events": self.events,
                "batches": self.batches,
                "queue_depth": backlog.queued_batches,
                "queue": {"batches": backlog.queued_batches, "events": backlog.queued_events},
                "lag_events": backlog.events,
                "lag": {"events": backlog.events, "seconds_behind": round(self.seconds_behind(backlog), 3),
                        "idle": self.idle, "in_hand": backlog.in_hand, "buffered": backlog.buffered},
                "scan": {"done": self.scan_done, "total": self.scan_total},
                "jobs": [dict(job) for job in self.jobs[-20:]],
                "models": {m: {"done": self.done[m], "failed": self.failed[m], "in_progress": self.in_progress[m]}
                           for m in sorted(set(self.done) | set(self.failed) | set(self.in_progress))},
            }
