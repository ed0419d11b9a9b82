"""What the daemon counts, for `status` (a snapshot dict) and for Prometheus (one registry per daemon).

Counters are prometheus_client instruments, so `/metrics` and `status` can never disagree.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.done: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.in_progress: dict[str, int] = defaultdict(int)
        self.events = 0
        self.batches = 0
        self.queue_depth = 0  # batches read ahead from the stream, waiting to be processed
        self.last_event_time: float | None = None  # cluster time of the newest processed event
        self.last_batch_at: float | None = None
        self.idle = True
        self.phase = "starting"  # starting | scanning | streaming | retrying | reloading | stopped | failed
        self.connection = "connecting"
        self.retries = 0
        self.last_error: str | None = None
        self.scan_done = 0
        self.scan_total = 0
        self.jobs: list[dict[str, Any]] = []  # background work: refresh, blue/green reload

        self.registry = CollectorRegistry()
        self.m_done = Counter("modelstream_documents_processed", "Outputs computed", ["model"], registry=self.registry)
        self.m_failed = Counter("modelstream_documents_failed", "Documents a model could not process", ["model"],
                                registry=self.registry)
        self.m_batch = Histogram("modelstream_model_batch_seconds", "Model batch latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.m_events = Counter("modelstream_events", "Change events processed", registry=self.registry)
        self.m_retries = Counter("modelstream_connection_retries", "Database connection retries",
                                 registry=self.registry)
        self.m_lag = Gauge("modelstream_lag_seconds", "Seconds behind the newest processed event",
                           registry=self.registry)
        self.m_lag.set_function(self.seconds_behind)
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
            self.last_error = error
        self.m_retries.inc()

    def batch(self, events: int, last_event_time: float | None) -> None:
        with self._lock:
            self.events += events
            self.batches += 1
            self.last_batch_at = time.time()
            if last_event_time is not None:
                self.last_event_time = last_event_time
        self.m_events.inc(events)

    def seconds_behind(self) -> float:
        if self.idle or self.last_event_time is None:
            return 0.0
        return max(0.0, time.time() - self.last_event_time)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self.phase,
                "uptime_s": round(time.time() - self.started, 3),
                "connection": self.connection,
                "retries": self.retries,
                "last_error": self.last_error,
                "events": self.events,
                "batches": self.batches,
                "queue_depth": self.queue_depth,
                "lag": {"seconds_behind": round(self.seconds_behind(), 3), "idle": self.idle},
                "scan": {"done": self.scan_done, "total": self.scan_total},
                "jobs": [dict(job) for job in self.jobs[-20:]],
                "models": {m: {"done": self.done[m], "failed": self.failed[m], "in_progress": self.in_progress[m]}
                           for m in sorted(set(self.done) | set(self.failed) | set(self.in_progress))},
            }
