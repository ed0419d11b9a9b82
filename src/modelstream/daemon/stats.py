"""Counters the daemon keeps for `status`: per model done/failed, events, lag, connection state."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.done: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.events = 0
        self.batches = 0
        self.last_event_time: float | None = None  # cluster time of the newest processed event
        self.last_batch_at: float | None = None
        self.idle = True
        self.phase = "starting"  # starting | scanning | streaming | retrying | stopped
        self.connection = "connecting"
        self.retries = 0
        self.last_error: str | None = None
        self.scan_done = 0
        self.scan_total = 0

    def add(self, counter: dict[str, int], model: str, n: int) -> None:
        with self._lock:
            counter[model] += n

    def batch(self, events: int, last_event_time: float | None) -> None:
        with self._lock:
            self.events += events
            self.batches += 1
            self.last_batch_at = time.time()
            if last_event_time is not None:
                self.last_event_time = last_event_time

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            behind = 0.0
            if not self.idle and self.last_event_time is not None:
                behind = max(0.0, time.time() - self.last_event_time)
            return {
                "phase": self.phase,
                "uptime_s": round(time.time() - self.started, 3),
                "connection": self.connection,
                "retries": self.retries,
                "last_error": self.last_error,
                "events": self.events,
                "batches": self.batches,
                "lag": {"seconds_behind": round(behind, 3), "idle": self.idle},
                "scan": {"done": self.scan_done, "total": self.scan_total},
                "models": {m: {"done": self.done[m], "failed": self.failed[m]}
                           for m in sorted(set(self.done) | set(self.failed))},
            }
