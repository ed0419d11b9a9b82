"""A kill -9 fault harness: prove at-least-once processing with effects exactly once.

One run: a registry (toymodels `letters`, the chained `doubled`, one cosine index) served by
`modelstream serve` as a real subprocess; several writer *processes*, each with its own pymongo
client, doing a paced mix of inserts, updates (of `text`) and deletes; a killer that SIGKILLs
the daemon at random moments and starts it again (and, optionally, SIGKILLs the database
server and starts it again on the same port and storage). At the end: wait for quiescence and
compare the end state with the database itself:

    missing outputs   documents (not poisoned) without `letters` or `doubled`
    stale outputs     an output that is not the model of the document's current text
    orphaned outputs  side documents without a source (collection store)
    orphaned vectors  index entries of documents that are gone
    missing vectors   documents that should be indexed and are not
    stale vectors     (sample) the indexed vector is not letters(current text)

Used by tests/test_faults.py (the CI sizes) and bench/fault_long.py (the long version).
The toy models live in tests/toymodels.py; this folder goes on the daemon's PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pymongo
from bson import ObjectId
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from modelstream.content import vector_of  # noqa: E402
from modelstream.daemon.embedded import free_port  # noqa: E402
from modelstream.errors import ApiError  # noqa: E402
from toymodels import letters  # noqa: E402

COLL = "docs"
INDEX = "letters"
MAX_N = 10_000  # the API's largest `n`

REGISTRY = """\
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
outputs: {{store: {store}}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text, batch_size: 64}}
  doubled: {{object: "toymodels:Scale", args: {{factor: 2.0}}, collection: docs, key: text,
            features: {{text: letters}}}}
indexes:
  letters: {{models: [letters], measure: cosine}}
"""


def write_registry(folder: Path, uri: str, db: str, store: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.yaml"
    path.write_text(REGISTRY.format(uri=uri, db=db, store=store))
    return path


# -- the database server: its own process, fixed port and storage, killable -------------------------

class DbServer:
    """SecantusDB on a fixed port and storage path: kill -9 it and start it again in place."""

    def __init__(self, storage: Path, port: int | None = None, extra: tuple[str, ...] = ()):
        self.storage = Path(storage)
        self.port = port or free_port()
        self.extra = tuple(extra)
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout_s: float = 60.0) -> "DbServer":
        self.storage.mkdir(parents=True, exist_ok=True)
        log = open(self.storage.parent / f"{self.storage.name}.log", "ab")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", str(self.storage), "--log-level", "WARNING", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the database exited with {self.process.returncode}")
                try:
                    client.admin.command("ping")
                    return self
                except PyMongoError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the database did not answer") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the daemon: `modelstream serve` as a subprocess ---------------------------------------------------

# `modelstream serve` as a subprocess: the same helper the other tests use.
from conftest import Serve as Daemon  # noqa: E402


# -- writers: separate processes, separate pymongo clients -----------------------------------------------

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform",
         "victor", "whiskey", "xray", "yankee", "zulu", "sofa", "dog", "snow", "river", "stone", "light"]


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))


@dataclass
class WriterPlan:
    uri: str
    db: str
    seed: int
    ops: int  # at least this many operations ...
    pace_s: float  # ... spread over about this long
    max_s: float  # ... and never write for longer than this
    poison: int = 0  # of the inserts, this many carry "POISON" (never updated or deleted afterwards)
    mix: tuple[float, float] = (0.5, 0.8)  # r < mix[0]: insert, < mix[1]: update, else delete
    journal: bool = True  # j:true, so a database killed with -9 cannot lose an acknowledged write


def _retrying(op, deadline: float):
    """Retry across a database restart: a retried insert of a known _id that landed is a duplicate."""
    delay = 0.05
    while True:
        try:
            return op()
        except DuplicateKeyError:
            return None
        except (ConnectionFailure, OperationFailure) as exc:
            if isinstance(exc, OperationFailure) and exc.code not in (None, 91, 189, 11600, 11602, 10107, 13435):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)


def writer_main(plan: WriterPlan, keep_going, results) -> None:
    """One writer process: paced ops on its own documents, with a hot set of recently written ones."""
    rng = random.Random(plan.seed)
    options = {"journal": True} if plan.journal else {}
    client = pymongo.MongoClient(plan.uri, serverSelectionTimeoutMS=2000, retryWrites=True, w=1, **options)
    coll = client[plan.db][COLL]
    error = None
    live: list[ObjectId] = []
    counts = {"insert": 0, "update": 0, "delete": 0, "poison": 0}
    poison_ids: list[str] = []
    poison_at = sorted(rng.sample(range(plan.ops // 2), plan.poison)) if plan.poison else []  # early: always written
    started = time.monotonic()
    hard_deadline = started + plan.max_s
    i = 0
    try:
        while True:
            now = time.monotonic()
            if now > hard_deadline or (i >= plan.ops and not keep_going.is_set()):
                break
            due = started + plan.pace_s * i / plan.ops
            if now < due:
                time.sleep(due - now)
            if poison_at and poison_at[0] == i:
                poison_at.pop(0)
                doc_id = ObjectId()
                _retrying(lambda: coll.insert_one({"_id": doc_id, "text": "POISON " + random_text(rng)}),
                          hard_deadline + 60)
                poison_ids.append(str(doc_id))
                counts["poison"] += 1
                i += 1
                continue
            r = rng.random()
            if r < plan.mix[0] or len(live) < 10:
                doc_id = ObjectId()
                _retrying(lambda: coll.insert_one({"_id": doc_id, "text": random_text(rng), "w": plan.seed}),
                          hard_deadline + 60)
                live.append(doc_id)
                counts["insert"] += 1
            elif r < plan.mix[1]:
                # half the updates hit the 20 newest documents: the same document changes again and again
                target = rng.choice(live[-20:]) if rng.random() < 0.5 else rng.choice(live)
                text = random_text(rng)
                _retrying(lambda: coll.update_one({"_id": target}, {"$set": {"text": text}}), hard_deadline + 60)
                counts["update"] += 1
            else:
                target = live.pop(rng.randrange(len(live)))
                _retrying(lambda: coll.delete_one({"_id": target}), hard_deadline + 60)
                counts["delete"] += 1
            i += 1
    except Exception as exc:  # noqa: BLE001 - reported to the harness, which fails the run
        error = f"{type(exc).__name__}: {exc}"
    finally:
        results.put({"seed": plan.seed, "counts": counts, "poison_ids": poison_ids, "error": error,
                     "seconds": round(time.monotonic() - started, 2)})
        client.close()


# -- the end state, checked against the database -----------------------------------------------------------

def _get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def check_state(db, store: str, daemon: Daemon, *, vector_sample: int | None = 200, seed: int = 0) -> dict:
    """Count what is wrong, comparing the daemon's outputs and index with the documents as they are."""
    docs = list(db[COLL].find({}))
    holders = {d["_id"]: d for d in docs} if store == "inline" else {
        s["_id"]: s for s in db["_outputs." + COLL].find({})}
    source_ids = {d["_id"] for d in docs}
    counts = {"documents": len(docs), "poisoned": 0, "missing_outputs": 0, "stale_outputs": 0,
              "poison_with_output": 0, "orphaned_outputs": 0}
    expected_indexed = set()
    for doc in docs:
        text = doc.get("text")
        holder = holders.get(doc["_id"], {})
        got_letters, got_doubled = _get(holder, "_outputs.text.letters"), _get(holder, "_outputs.text.doubled")
        if isinstance(text, str) and "POISON" in text:
            counts["poisoned"] += 1
            counts["poison_with_output"] += got_letters is not None
            continue
        expected_indexed.add(doc["_id"])
        if got_letters is None or got_doubled is None:
            counts["missing_outputs"] += 1
            continue
        want = letters(text)
        if not (np.allclose(vector_of(got_letters), want) and np.allclose(vector_of(got_doubled), 2 * want)):
            counts["stale_outputs"] += 1
    if store == "collection":
        counts["orphaned_outputs"] = len(set(holders) - source_ids)

    status = daemon.status()
    size = status["indexes"][INDEX]["size"]
    counts["index_size"] = size
    counts["expected_indexed"] = len(expected_indexed)
    with daemon.client(timeout_s=120) as c:
        if 0 < size <= MAX_N:
            # every letters vector has a positive cosine with all-ones: n = size lists the whole index
            indexed = {r["_id"] for r in c.search(INDEX, vector=[1.0] * 26, n=size)}
        else:
            indexed = set()
            for doc_id in expected_indexed:
                with contextlib.suppress(ApiError):
                    c.search(INDEX, like={"_id": doc_id}, n=1)
                    indexed.add(doc_id)
        counts["orphaned_vectors"] = len(indexed - expected_indexed) + max(0, size - len(indexed)) \
            if size <= MAX_N else max(0, size - len(indexed))
        counts["missing_vectors"] = len(expected_indexed - indexed)
        by_id = {d["_id"]: d for d in docs}
        sample = sorted(expected_indexed & indexed)
        if vector_sample is not None and len(sample) > vector_sample:
            sample = random.Random(seed).sample(sample, vector_sample)
        stale = 0
        for doc_id in sample:
            hits = c.search(INDEX, vector=letters(by_id[doc_id]["text"]).tolist(), n=1, filter={"_id": doc_id})
            stale += not (hits and hits[0]["_id"] == doc_id and hits[0]["score"] > 0.999)
        counts["vectors_checked"] = len(sample)
        counts["stale_vectors"] = stale
    counts["errors_logged"] = db["_modelstream.errors"].count_documents({})
    return counts


BAD_KEYS = ("missing_outputs", "stale_outputs", "poison_with_output", "orphaned_outputs", "orphaned_vectors",
            "missing_vectors", "stale_vectors")


def is_clean(counts: dict) -> bool:
    return all(counts.get(k, 0) == 0 for k in BAD_KEYS) and counts["index_size"] == counts["expected_indexed"]


def wait_quiescent(db, store: str, daemon: Daemon, timeout_s: float = 120) -> float:
    """Write a marker after everything else; once the daemon has indexed it, every earlier event is done."""
    started = time.monotonic()
    marker = db[COLL].insert_one({"text": "quiescence marker"}, ).inserted_id
    holder = db[COLL] if store == "inline" else db["_outputs." + COLL]
    deadline = started + timeout_s
    while True:
        done = _get(holder.find_one({"_id": marker}) or {}, "_outputs.text.doubled") is not None
        if done:
            try:
                with daemon.client() as c:
                    c.search(INDEX, like={"_id": marker}, n=1)
                status = daemon.status()
                if status["phase"] == "streaming":
                    return time.monotonic() - started
            except (ApiError, OSError):
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no quiescence within {timeout_s}s: {daemon.tail()}")
        time.sleep(0.05)


def settle(db, store: str, daemon: Daemon, settle_s: float = 0.0, **check) -> tuple[dict, int]:
    """Check; if not clean, check again for up to settle_s (an eventual fix is still reported)."""
    deadline = time.monotonic() + settle_s
    checks = 1
    counts = check_state(db, store, daemon, **check)
    while not is_clean(counts) and time.monotonic() < deadline:
        time.sleep(1.0)
        counts = check_state(db, store, daemon, **check)
        checks += 1
    return counts, checks


# -- one run ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    folder: Path
    uri: str
    db_name: str
    store: str = "inline"
    writers: int = 3
    ops: int = 5000  # in all, over the writers
    pace_s: float = 30.0
    max_s: float = 120.0
    kills: int = 10  # at least this many kill -9 of the daemon while writing
    up_s: tuple[float, float] = (0.3, 2.0)  # the daemon lives this long between kills
    down_s: tuple[float, float] = (0.0, 0.3)  # and stays dead this long
    poison: int = 0
    seed: int = 1
    db_server: DbServer | None = None  # given: the database is killed too
    db_kills: int = 0
    db_down_s: tuple[float, ...] = (2.0,)  # how long each database kill keeps it down
    journal: bool = False
    vector_sample: int | None = 200  # None: check every indexed vector against letters(text)
    settle_s: float = 0.0  # >0: if the first check is not clean, check again for this long
    report: dict = field(default_factory=dict)

    def execute(self, before_check=None) -> dict:
        """Write, kill, restart, wait, check; returns the counts (also kept in self.report)."""
        registry = write_registry(self.folder, self.uri, self.db_name, self.store)
        daemon = Daemon(registry).start()
        ctx = mp.get_context("spawn")
        keep_going, results = ctx.Event(), ctx.Queue()
        keep_going.set()
        per = -(-self.ops // self.writers)
        plans = [WriterPlan(self.uri, self.db_name, self.seed * 100 + w, per, self.pace_s, self.max_s,
                            poison=self.poison // self.writers + (w < self.poison % self.writers),
                            journal=self.journal)
                 for w in range(self.writers)]
        procs = [ctx.Process(target=writer_main, args=(p, keep_going, results), daemon=True) for p in plans]
        started = time.monotonic()
        for p in procs:
            p.start()
        rng = random.Random(self.seed)
        kills = db_kills = 0
        kill_times: list[float] = []
        db_kill_at = sorted(rng.uniform(0.2, 0.8) * self.pace_s for _ in range(self.db_kills))
        try:
            while any(p.is_alive() for p in procs):
                if self.kills and kills >= self.kills:
                    keep_going.clear()
                if time.monotonic() - started > self.max_s + 60:
                    raise AssertionError("writers ran past their bound")
                if db_kill_at and time.monotonic() - started >= db_kill_at[0]:
                    db_kill_at.pop(0)
                    self.db_server.kill()
                    time.sleep(self.db_down_s[db_kills % len(self.db_down_s)])
                    self.db_server.start()
                    db_kills += 1
                    continue
                if kills >= self.kills:  # enough kills: let the writers finish
                    keep_going.clear()
                    time.sleep(0.1)
                    continue
                time.sleep(rng.uniform(*self.up_s))
                if not any(p.is_alive() for p in procs):
                    break
                daemon.kill()
                kills += 1
                kill_times.append(round(time.monotonic() - started, 2))
                time.sleep(rng.uniform(*self.down_s))
                daemon.start()
            keep_going.clear()
            for p in procs:
                p.join(60)
            writer_reports = [results.get(timeout=10) for _ in procs]
            errors = [r["error"] for r in writer_reports if r["error"]]
            if errors:
                raise AssertionError(f"writers failed: {errors}")
            write_s = time.monotonic() - started
            if not daemon.alive():
                daemon.start()
            if before_check is not None:
                before_check(daemon)
            client = pymongo.MongoClient(self.uri)
            quiet_s = wait_quiescent(client[self.db_name], self.store, daemon)
            checked = time.monotonic()
            counts, checks = settle(client[self.db_name], self.store, daemon, self.settle_s,
                                    vector_sample=self.vector_sample, seed=self.seed)
            client.close()
            check_s = time.monotonic() - checked
            ops = {k: sum(r["counts"][k] for r in writer_reports) for k in ("insert", "update", "delete", "poison")}
            self.report = {"store": self.store, "kills": kills, "db_kills": db_kills, "daemon_starts": daemon.starts,
                           "ops": ops, "ops_total": sum(ops.values()), "write_s": round(write_s, 1),
                           "quiescence_s": round(quiet_s, 1), "check_s": round(check_s, 1), "checks": checks,
                           "poison_ids": [i for r in writer_reports for i in r["poison_ids"]],
                           "retries": daemon.status().get("retries"), **counts}
            self.daemon = daemon
            return self.report
        finally:
            keep_going.clear()
            for p in procs:
                if p.is_alive():
                    p.kill()
            self.daemon = daemon

    def close(self) -> None:
        daemon = getattr(self, "daemon", None)
        if daemon is not None and daemon.alive():
            daemon.kill()


def printable(report: dict) -> str:
    shown = {k: v for k, v in report.items() if k != "poison_ids"}
    return json.dumps(shown, sort_keys=False)


__all__ = ["BAD_KEYS", "Daemon", "DbServer", "Run", "check_state", "is_clean", "printable", "settle",
           "wait_quiescent", "write_registry"]
