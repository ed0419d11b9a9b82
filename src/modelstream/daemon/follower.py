"""Follow the database's change stream and keep every output and index in step.

Start-up: open the stream first (to pin a position), then scan every collection for missing
or stale outputs (building the indexes on the way), then consume the stream from the pinned
position, so that nothing written during the scan falls between scan and stream. Each batch:
events -> current documents -> Processor -> checkpoint. A lost connection is retried with
bounded exponential back-off and resumed from the saved token; a lost position (token off
the oplog, invalidated stream) is logged loudly and followed by a fresh scan.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo.database import Database
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from modelstream import log
from modelstream.daemon.checkpoint import Checkpoints
from modelstream.daemon.documents import RESERVED, id_key, pages
from modelstream.daemon.processor import Processor
from modelstream.daemon.stats import Backlog, Stats
from modelstream.daemon.stores import chunks

logger = log.get("modelstream.follower")

MAX_EVENTS = 1024  # per batch; a burst is taken in getMore-sized gulps up to this
AWAIT_MS = 200  # how long an idle getMore waits; bounds the reaction time to a stop request
IDLE_CHECKPOINT_S = 1.0
BACKOFF_S = (0.5, 1, 2, 4, 8, 16, 30)
POSITION_LOST = {9, 260, 280, 286}  # bad token, invalid token, fatal, ChangeStreamHistoryLost
# Errors that say "try again later", not "this token is no good" (pymongo's resumable set, roughly)
TRANSIENT = {6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436}

LARGE_DOCUMENT = 8 << 20
TOO_LARGE = "modelstreamTooLarge"
GONE = {"drop", "rename", "dropDatabase", "invalidate"}


class TokenRejected(OperationFailure):
    """Opening the stream at the saved token failed for a reason other than a transient one."""


def own_writes_filter(collections: list[str]) -> dict:
    """Server-side $match: only watched collections, and no update that touches reserved fields only."""
    reserved = "^(" + "|".join(RESERVED) + r")(\.|$)"
    changed_paths = {"$concatArrays": [
        {"$map": {"input": {"$objectToArray": {"$ifNull": ["$updateDescription.updatedFields", {}]}},
                  "in": "$$this.k"}},
        {"$ifNull": ["$updateDescription.removedFields", []]},
    ]}
    user_paths = {"$filter": {"input": changed_paths,
                              "cond": {"$not": [{"$regexMatch": {"input": "$$this", "regex": reserved}}]}}}
    return {"$match": {
        "ns.coll": {"$in": collections},
        "$or": [{"operationType": {"$ne": "update"}}, {"$expr": {"$gt": [{"$size": user_paths}, 0]}}],
    }}


def stream_pipeline(collections: list[str]) -> list[dict]:
    """Our $match, then one stage that keeps every event far below the 16 MB BSON limit: only the fields the
    daemon reads (no updateDescription), and no full document over LARGE_DOCUMENT bytes (read by `_id`
    instead). One stage, not three: each stage costs the server about as much as the $match itself."""
    too_large = {"$gt": [{"$bsonSize": {"$ifNull": ["$fullDocument", {}]}}, LARGE_DOCUMENT]}
    return [
        own_writes_filter(collections),
        {"$replaceWith": {
            "_id": "$_id", "operationType": "$operationType", "ns": "$ns", "documentKey": "$documentKey",
            "clusterTime": "$clusterTime", "fullDocument": {"$cond": [too_large, "$$REMOVE", "$fullDocument"]},
            TOO_LARGE: too_large,
        }},
    ]


LARGE = object()  # marks a change whose document is read separately


class Follower:
    def __init__(self, db: Database, processor: Processor, checkpoints: Checkpoints, stats: Stats):
        self.db = db
        self.processor = processor
        self.checkpoints = checkpoints
        self.stats = stats
        self.collections = processor.plan.registry.collections()
        self.scanned = threading.Event()  # set once the first full scan is done
        self.on_batch: Callable[[], None] | None = None
        # What `backlog` reads from other threads (status, /metrics): set while a stream is open.
        self._stream = None
        self._reader: _ReadAhead | None = None
        self._in_hand = 0
        self._in_hand_since: float | None = None
        stats.backlog = self.backlog

    def backlog(self) -> Backlog:
        """Events received from the server and not yet applied and checkpointed, by where they wait."""
        reader, stream = self._reader, self._stream
        batches, events = reader.depth() if reader is not None else (0, 0)
        return Backlog(queued_batches=batches, queued_events=events, in_hand=self._in_hand,
                       buffered=_buffered(stream), oldest_in_hand=self._in_hand_since)

    def _hold(self, events: list[dict]) -> None:
        """`events` are in hand (0 events: none is) until applied and checkpointed."""
        self._in_hand = len(events)
        cluster_time = events[0].get("clusterTime") if events else None
        self._in_hand_since = cluster_time.time if cluster_time is not None else None

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: stream, and recover from what the database throws at us."""
        failures = 0
        need_scan = True
        while not stop.is_set():
            try:
                self._follow(stop, need_scan)
                need_scan = False
            except OperationFailure as exc:
                if exc.code in POSITION_LOST or isinstance(exc, TokenRejected):
                    logger.error("change stream position lost: rescanning everything", code=exc.code,
                                 error=str(exc)[:300], hint="raise the oplog size/retention if this repeats")
                    self.checkpoints.clear()
                    need_scan = True
                    continue
                failures = self._back_off(stop, exc, failures)
            except (ConnectionFailure, PyMongoError) as exc:
                failures = self._back_off(stop, exc, failures)
            else:
                failures = 0
        self.stats.phase = "stopped"

    def _back_off(self, stop: threading.Event, exc: Exception, failures: int) -> int:
        delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        self.stats.phase, self.stats.connection = "retrying", "lost"
        self.stats.retry(f"{type(exc).__name__}: {exc}"[:500])
        logger.warning("database unreachable; retrying", error=self.stats.last_error, retry_in_s=delay,
                       attempt=failures + 1)
        stop.wait(delay)
        return failures + 1

    def _follow(self, stop: threading.Event, need_scan: bool) -> None:
        token = self.checkpoints.load()
        try:
            stream = self.db.watch(stream_pipeline(self.collections), full_document="updateLookup",
                                   start_after=token, max_await_time_ms=AWAIT_MS, batch_size=MAX_EVENTS)
        except OperationFailure as exc:
            # A token the server refuses (another stream's, another namespace's, corrupt) would be refused
            # forever: treat it as a lost position. Without a token there is nothing to give up, so back off.
            transient = exc.code in TRANSIENT or exc.has_error_label("ResumableChangeStreamError") \
                or exc.has_error_label("RetryableWriteError")
            if token is not None and not transient:
                raise TokenRejected(str(exc), exc.code, exc.details) from exc
            raise
        with stream:
            self.stats.connection = "connected"
            self._stream = stream
            try:
                pending = self._gather(stream)  # pins the position before the scan; keeps any early events
                self._hold(pending)  # received: lag until applied after the scan
                if need_scan or token is None:
                    self.scan(stop)
                self.stats.phase = "streaming"
                if pending:
                    self._step(pending, stream.resume_token)
                self._consume(stream, stop)
            finally:
                self._stream = None
                self._hold([])  # a closed stream holds nothing we received: it is read again on reopening

    def _consume(self, stream, stop: threading.Event) -> None:
        """Batches from the read-ahead until `stop`, an invalidated stream, or an error (raised to `run`)."""
        reader = _ReadAhead(self, stream)
        self._reader = reader
        try:
            last_saved = time.monotonic()
            while not stop.is_set():
                item = reader.next(timeout_s=AWAIT_MS / 1000 + 1)
                if item is None:
                    continue
                events, resume_token, alive = item
                if events:
                    if self._step(events, resume_token):
                        return
                    last_saved = time.monotonic()
                else:
                    self.stats.idle = True
                    if time.monotonic() - last_saved > IDLE_CHECKPOINT_S and resume_token:
                        self.checkpoints.save(resume_token)  # postBatchResumeToken: an idle stream advances
                        last_saved = time.monotonic()
                if self.on_batch:
                    self.on_batch()
                if not alive:  # invalidated (dropDatabase; its events are $match-ed out): reopen after it
                    if resume_token:
                        self.checkpoints.save(resume_token)
                    return
        finally:
            self._reader = None
            reader.close()

    def _step(self, events: list[dict], resume_token: dict | None) -> bool:
        """Apply one batch, then checkpoint it; True when the stream was invalidated and must be reopened."""
        self.stats.idle = False
        self._hold(events)
        self._apply(events)
        self.checkpoints.save(resume_token)
        self._hold([])  # only now: a crash before the checkpoint would replay these events
        return any(e["operationType"] in ("invalidate", "dropDatabase") for e in events)

    def _gather(self, stream) -> list[dict]:
        """The events the next getMore brings (waiting up to AWAIT_MS), and those already buffered."""
        events: list[dict] = []
        while len(events) < MAX_EVENTS:
            event = stream.try_next()
            if event is None:
                break
            events.append(event)
            # pymongo has no public "anything buffered?"; without it we would wait AWAIT_MS per batch.
            if not len(getattr(stream._cursor, "_data", ())):
                break
        return events

    # -- one batch of events ------------------------------------------------------------------------

    def _apply(self, events: list[dict]) -> None:
        latest: dict[str, dict[Any, tuple[Any, dict | None]]] = {}
        dropped: set[str] = set()
        for event in events:
            kind = event["operationType"]
            coll = event.get("ns", {}).get("coll")
            if kind in GONE:
                if coll:
                    dropped.add(coll)
                    latest.pop(coll, None)
                else:
                    dropped.update(self.collections)
                    latest.clear()
                continue
            doc_id = event["documentKey"]["_id"]
            full = None if kind == "delete" else event.get("fullDocument")
            if full is None and event.get(TOO_LARGE) and kind != "delete":
                full = LARGE  # read below, by _id
            latest.setdefault(coll, {})[id_key(doc_id)] = (doc_id, full)
        for coll in sorted(dropped):
            logger.warning("collection dropped or renamed: its outputs and vectors are gone", collection=coll)
            self._forget_collection(coll)
        for coll, changes in latest.items():
            self._read_large(coll, changes)
            docs = [full for _, full in changes.values() if full is not None]
            deleted = [doc_id for doc_id, full in changes.values() if full is None]
            self.processor.process(coll, docs, deleted)
        last_time = events[-1].get("clusterTime")
        self.stats.batch(len(events), last_time.time if last_time is not None else None)

    def _read_large(self, coll: str, changes: dict) -> None:
        """Documents too large to ride in their event: read them now (gone by now: treated as deleted)."""
        large = [doc_id for doc_id, full in changes.values() if full is LARGE]
        for part in chunks(large):
            found = {id_key(d["_id"]): d for d in self.db[coll].find({"_id": {"$in": part}})}
            for doc_id in part:
                changes[id_key(doc_id)] = (doc_id, found.get(id_key(doc_id)))

    def _forget_collection(self, coll: str) -> None:
        self.processor.forget_recent(coll)
        self.processor.stores[coll].drop()
        for spec in self.processor.index_specs(coll):
            self.processor.indexes[spec.name].clear()

    # -- the scan -------------------------------------------------------------------------------

    def scan(self, stop: threading.Event | None = None) -> None:
        """Every document of every watched collection: compute what is missing or stale, fill indexes."""
        self.stats.phase = "scanning"
        for coll in self.collections:
            total = self.db[coll].estimated_document_count()
            self.stats.scan_total += total
            seen: set = set()
            logger.info("scanning", collection=coll, documents=total)
            for page in pages(self.db[coll]):
                seen.update(id_key(d["_id"]) for d in page)
                self.processor.process(coll, page, [], load_index=True)
                self.stats.scan_done += len(page)
                if stop is not None and stop.is_set():
                    return
            self._forget_orphans(coll, seen)
        self.scanned.set()
        logger.info("scan complete", documents=self.stats.scan_done)

    def _forget_orphans(self, coll: str, seen: set) -> None:
        """Vectors and side documents whose source was deleted while we were not watching."""
        for spec in self.processor.index_specs(coll):
            index = self.processor.indexes[spec.name]
            index.remove([i for i in index.ids() if id_key(i) not in seen])
        stored = self.processor.stores[coll].stored_ids()
        if stored is None:
            return
        orphans = [i for i in stored if id_key(i) not in seen]
        for part in chunks(orphans):
            self.processor.process(coll, [], part)
        if orphans:
            logger.info("removed orphaned outputs", collection=coll, count=len(orphans))


def _buffered(stream) -> int:
    """Events the driver has received for this stream and not yet handed out (pymongo has no public count)."""
    try:
        return len(stream._cursor._data)
    except (AttributeError, TypeError):  # no stream open, or a driver that keeps it elsewhere
        return 0


class _ReadAhead:
    """Reads the next events while the current batch is computed and written.

    The database and the daemon then work at the same time instead of taking turns; the queue is
    short, so a slow model applies back-pressure. Each item carries the resume token that covers
    exactly its events, so a checkpoint never runs ahead of the work done. Errors travel through
    the queue and are raised in the follower's thread, where the retry logic lives.
    """

    def __init__(self, follower: Follower, stream) -> None:
        self.follower = follower
        self.stream = stream
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.halt = threading.Event()
        self.held: Exception | None = None
        self._count_lock = threading.Lock()
        self._events = 0  # read off the cursor, not yet taken by the follower (queued, or waiting for room)
        self.thread = threading.Thread(target=self._run, name="stream-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.halt.is_set():
                events = self.follower._gather(self.stream)
                alive = self.stream.alive
                if not events and alive and not self.queue.empty():
                    # Nothing new while the follower is busy: queuing it would fill the queue with nothing
                    # and stop us reading what arrives next (status could not count it as lag). The next
                    # item's resume token supersedes this one's.
                    continue
                self._count(len(events))
                self._put((events, self.stream.resume_token, alive))
                if not alive:
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the follower thread
            self._put(exc)

    def _put(self, item) -> None:
        while not self.halt.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next(self, timeout_s: float):
        """The next events, merged with any more already read (up to MAX_EVENTS): a busy stream gives the
        models bigger batches. The resume token and liveness are those of the last part merged."""
        if self.held is not None:
            raise self.held
        try:
            item = self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        events, token, alive = item
        self._count(-len(events))
        while alive and events and len(events) < MAX_EVENTS:
            try:
                more = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(more, Exception):
                self.held = more  # raised on the next call, after this batch is done
                break
            events = events + more[0]
            token, alive = more[1], more[2]
            self._count(-len(more[0]))
        return events, token, alive

    def _count(self, n: int) -> None:
        with self._count_lock:
            self._events += n

    def depth(self) -> tuple[int, int]:
        """(batches queued, events read ahead): what status calls the queue."""
        with self._count_lock:
            return self.queue.qsize(), self._events

    def close(self) -> None:
        self.halt.set()
        self.thread.join(AWAIT_MS / 1000 + 5)

