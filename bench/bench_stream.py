"""Throughput and latency of `modelstream serve` against raw baselines, measured in one run.

    .venv/bin/python bench/bench_stream.py            # full sizes, a few minutes on 2 cores
    .venv/bin/python bench/bench_stream.py --quick    # small sizes, a smoke run

Not a test: it prints a table of figures and daemon/raw ratios against targets, and exits 0
whether or not a target is met (exit 1 only if something broke). One embedded SecantusDB server
serves every section; each daemon is a real `modelstream serve` subprocess reached over its Unix
socket; documents are written with plain pymongo. Raw baselines run while no daemon is up.

  (a) MiniLM: raw batched `forward` (batch 128) vs daemon, insert_many -> all outputs written
  (b) trivial model (a fixed vector): raw bulk `$set` of the same BSON float32 vectors vs daemon
  (c) insert -> searchable latency, one document at a time at light load
  (d) socket search latency (`vector=`) vs FAISS IndexFlatIP in-process, on the same vectors
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pymongo
from bson.binary import Binary, BinaryVectorDtype
from pymongo import UpdateOne

from modelstream.api.client import Client
from modelstream.daemon.embedded import EmbeddedServer
from modelstream.errors import ApiError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SENTENCES = ROOT / "examples" / "text_search" / "sentences.txt"
sys.path.insert(0, str(HERE))

import benchmodels  # noqa: E402 - after the path is set

FULL = {"a": 3000, "b": 10000, "c": 200, "c_rate": 20.0, "d": 5000, "d_queries": 1000}
QUICK = {"a": 384, "b": 2000, "c": 50, "c_rate": 20.0, "d": 1000, "d_queries": 200}
TARGETS = {"a": 0.9, "b": 0.8, "c_p50_ms": 20.0}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sentences(n: int) -> list[str]:
    lines = [line.strip() for line in SENTENCES.read_text().splitlines() if line.strip()]
    if n <= len(lines):
        return lines[:n]
    return [f"{lines[i % len(lines)]} #{i}" for i in range(n)]  # unique texts beyond the corpus


def cpu_s(pid: int | None) -> float:
    """User+system CPU seconds a live process has used so far (Linux /proc); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU seconds spent by the database server, the daemon and this script over a timed span."""

    server_pid: int | None = None

    def __init__(self, serve: "Serve | None" = None):
        self.pids = {"server": CpuMeter.server_pid, "daemon": serve.process.pid if serve else None,
                     "bench": os.getpid()}
        self.start = {k: cpu_s(p) for k, p in self.pids.items()}
        self.t0 = time.perf_counter()

    def stop(self) -> str:
        wall = time.perf_counter() - self.t0
        used = {k: cpu_s(p) - self.start[k] for k, p in self.pids.items() if p is not None}
        self.total = sum(used.values())
        parts = ", ".join(f"{k} {v:.1f}s ({v / wall:.0%})" for k, v in used.items())
        return f"CPU over {wall:.1f}s wall: {parts}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -- processes -----------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the daemon gets SIGTERM if this script dies, even by kill -9."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Serve:
    """`modelstream serve -c registry.yaml` as a subprocess; its socket is <folder>/.modelstream/api.sock."""

    def __init__(self, folder: Path, uri: str, db_name: str, models: dict, indexes: dict,
                 outputs: dict | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "benchmodels.py", folder / "benchmodels.py")
        # JSON is YAML: every string quoted, no surprises with the URI's `?` and `=`.
        registry = {"database": {"uri": uri, "name": db_name}, "api": {"listen": None},
                    "models": models, "indexes": indexes, **({"outputs": outputs} if outputs else {})}
        self.registry = folder / "registry.yaml"
        self.registry.write_text(json.dumps(registry, indent=1) + "\n")
        self.socket = str(folder / ".modelstream" / "api.sock")
        self.log = folder / "serve.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> "Serve":
        env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelstream", "serve", "-c", str(self.registry), "--json-logs"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=self.folder,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                with self.client() as c:
                    c.ping()
                    if c.status()["phase"] == "streaming":  # the start-up scan is over
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not come up in {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def client(self) -> Client:
        return Client(self.socket, timeout_s=30).connect()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_indexed(client: Client, index: str, n: int, interval_s: float, timeout_s: float, serve: Serve) -> float:
    """Poll status until the index holds n vectors; return perf_counter() at that moment."""
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    while True:
        status = client.status()
        size = status["indexes"][index]["size"]
        if size >= n:
            return time.perf_counter()
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"index {index} has {size}/{n} vectors after {timeout_s:.0f}s "
                               f"(phase {status['phase']}, last_error {status['last_error']}):\n{serve.log_tail()}")
        if serve.process.poll() is not None:
            raise RuntimeError(f"serve exited {serve.process.returncode}:\n{serve.log_tail()}")
        if now - last_report > 10:
            say(f"  ... {index}: {size}/{n} indexed")
            last_report = now
        time.sleep(interval_s)


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    daemon: str
    raw: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: str) -> None:
        self.rows.append(Row(*args))

    def ratio(self, what: str, daemon: float, raw: float, unit: str, target: float | None) -> None:
        r = daemon / raw if raw else float("nan")
        verdict = "" if target is None else ("PASS" if r >= target else "MISS")
        self.add(what, f"{daemon:,.1f} {unit}", f"{raw:,.1f} {unit}", f"{r:.3f}",
                 "" if target is None else f">= {target}", verdict)

    def print(self) -> None:
        header = Row("measure", "daemon / socket", "raw baseline", "ratio", "target", "")
        rows = [header] + self.rows
        widths = [max(len(getattr(r, f)) for r in rows) for f in ("what", "daemon", "raw", "ratio", "target",
                                                                   "verdict")]

        def line(r: Row) -> str:
            cells = (r.what, r.daemon, r.raw, r.ratio, r.target, r.verdict)
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) if i < 5 else c
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(line(header))
        print(rule)
        print(line(header))
        print(rule)
        for r in self.rows:
            print(line(r))
        print(rule)
        for note in self.notes:
            print(note)


# -- the sections --------------------------------------------------------------------------------------


def bench_a(uri: str, work: Path, n: int, results: Results) -> None:
    from modelstream.models.text import MiniLM

    texts = sentences(n)
    batch = 128
    say(f"(a) raw MiniLM forward: {n} texts, batch {batch}")
    model = MiniLM()
    model.forward(texts[:batch])  # warm-up, not timed (the daemon's first batch is cold: it pays it)
    meter = CpuMeter()
    started = time.perf_counter()
    for start in range(0, n, batch):
        model.forward([model.preprocess(t) for t in texts[start:start + batch]])
    raw_s = time.perf_counter() - started
    raw_cpu = meter.stop()
    raw_total_cpu = meter.total
    say(f"    raw: {n / raw_s:.1f} docs/s ({raw_s:.1f}s)")

    serve = Serve(work / "a", uri, "bench_a",
                  {"minilm": {"object": "modelstream.models.text:MiniLM", "collection": "sentences",
                              "key": "text", "batch_size": batch}},
                  {"sentences": {"models": ["minilm"], "measure": "cosine", "type": "flat"}})
    say("(a) starting modelstream serve with MiniLM")
    try:
        serve.start()
        mongo = pymongo.MongoClient(uri)
        coll = mongo["bench_a"]["sentences"]
        with serve.client() as c:
            say(f"(a) daemon: insert_many {n} docs, wait for all outputs")
            meter = CpuMeter(serve)
            t0 = time.perf_counter()
            coll.insert_many([{"_id": i, "text": t} for i, t in enumerate(texts)], ordered=False)
            t_inserted = time.perf_counter()
            t_done = wait_indexed(c, "sentences", n, 0.1, 600, serve)
            daemon_cpu = meter.stop()
            daemon_total_cpu = meter.total
            status = c.status()
        written = coll.count_documents({"_outputs.text.minilm": {"$exists": True}})
        mongo.close()
    finally:
        serve.stop()
    # The machine may be shared: measure raw again, on a slice, to see how much the baseline drifted.
    m = min(n, 8 * batch)
    started = time.perf_counter()
    for start in range(0, m, batch):
        model.forward([model.preprocess(t) for t in texts[start:start + batch]])
    raw_after = m / (time.perf_counter() - started)
    del model
    daemon_s = t_done - t0
    say(f"    daemon: {n / daemon_s:.1f} docs/s ({daemon_s:.1f}s; insert_many took {t_inserted - t0:.2f}s)")
    failed = status["models"].get("minilm", {}).get("failed", 0)
    if written != n or failed:
        results.notes.append(f"(a) WARNING: {written}/{n} docs have _outputs.text.minilm, {failed} failed")
    results.ratio(f"(a) MiniLM docs/s, n={n}", n / daemon_s, n / raw_s, "docs/s", TARGETS["a"])
    results.notes.append(f"(a) daemon: insert_many {t_inserted - t0:.2f}s, then {t_done - t_inserted:.1f}s until "
                         f"the last output; {status['batches']} stream batches")
    results.notes.append(f"(a) raw re-measured after the daemon on {m} texts: {raw_after:.1f} docs/s "
                         f"({raw_after / (n / raw_s) - 1:+.0%} vs before; daemon/raw-after {n / daemon_s / raw_after:.3f})")
    results.notes.append(f"(a) raw    {raw_cpu}")
    results.notes.append(f"(a) daemon {daemon_cpu}")
    if raw_total_cpu and daemon_total_cpu:
        results.notes.append(f"(a) docs per CPU-second (all processes): daemon {n / daemon_total_cpu:.1f}, raw "
                             f"{n / raw_total_cpu:.1f}, ratio {raw_total_cpu / daemon_total_cpu:.3f}")


OUTPUTS_DB = "bench_outputs"  # --store collection: side collections in their own database, as MongoEngine needs


def outputs_of(mongo, coll, store: str):
    """Where the outputs of `coll` land: the collection itself (inline), or its side collection."""
    return coll if store == "inline" else mongo[OUTPUTS_DB][f"_outputs.{coll.name}"]


def bench_bcd(uri: str, work: Path, sizes: dict, sections: str, results: Results, store: str = "inline") -> None:
    n_b, n_c, n_d = sizes["b"], sizes["c"], sizes["d"]
    mongo = pymongo.MongoClient(uri)
    raw_b = raw_d = None
    try:
        if "b" in sections:
            raw_b = raw_bulk_set(mongo["bench_raw"]["fixed"], n_b, outputs_of(mongo, mongo["bench_raw"]["fixed"], store))
        serve = Serve(work / "bcd", uri, "bench_b",
                      {"fixed": {"object": "benchmodels:fixed", "collection": "fixed", "key": "text",
                                 "batch_size": 128},
                       "fixed_latency": {"object": "benchmodels:fixed", "collection": "latency", "key": "text"},
                       "hashed": {"object": "benchmodels:hashed", "collection": "hashed", "key": "text",
                                  "batch_size": 128}},
                      {"fixed": {"models": ["fixed"], "measure": "dot"},
                       "latency": {"models": ["fixed_latency"], "measure": "dot"},
                       "hashed": {"models": ["hashed"], "measure": "cosine"}},
                      None if store == "inline" else {"store": "collection", "database": OUTPUTS_DB})
        say("(b-d) starting modelstream serve with the trivial models")
        try:
            serve.start()
            db = mongo["bench_b"]
            if "b" in sections:
                daemon_b(serve, db["fixed"], outputs_of(mongo, db["fixed"], store), n_b, raw_b, results)
            if "c" in sections:
                latency_c(serve, db["latency"], n_c, sizes["c_rate"], results)
            if "d" in sections:
                socket_times, socket_top1, queries = search_d(serve, db["hashed"], n_d, sizes["d_queries"])
        finally:
            serve.stop()
        if "d" in sections:
            raw_d = faiss_d(n_d, queries)
            report_d(n_d, socket_times, socket_top1, raw_d, results)
    finally:
        mongo.close()


def raw_bulk_set(coll, n: int, outputs) -> dict:
    """`outputs`: the collection itself, or a side collection (then the $set upserts one document per _id)."""
    say(f"(b) raw: insert_many {n} docs, then bulk_write {n} UpdateOne $set of a BSON float32 vector"
        + ("" if outputs is coll else f" into {outputs.full_name}"))
    coll.drop()
    outputs.drop()
    texts = sentences(n)
    vector = Binary.from_vector(benchmodels.FIXED.tolist(), BinaryVectorDtype.FLOAT32)
    t0 = time.perf_counter()
    coll.insert_many([{"_id": i, "text": t} for i, t in enumerate(texts)], ordered=False)
    t1 = time.perf_counter()
    meter = CpuMeter()
    outputs.bulk_write([UpdateOne({"_id": i}, {"$set": {"_outputs.text.fixed": vector}}, upsert=outputs is not coll)
                        for i in range(n)], ordered=False)
    t2 = time.perf_counter()
    set_cpu = meter.stop()
    assert outputs.count_documents({"_outputs.text.fixed": {"$exists": True}}) == n
    coll.drop()
    outputs.drop()
    say(f"    raw: insert {n / (t1 - t0):,.0f} docs/s, $set {n / (t2 - t1):,.0f} docs/s")
    return {"insert_s": t1 - t0, "set_s": t2 - t1, "cpu": set_cpu}


def daemon_b(serve: Serve, coll, outputs, n: int, raw: dict, results: Results) -> None:
    texts = sentences(n)
    say(f"(b) daemon: insert_many {n} docs, wait for all outputs")
    with serve.client() as c:
        meter = CpuMeter(serve)
        t0 = time.perf_counter()
        coll.insert_many([{"_id": i, "text": t} for i, t in enumerate(texts)], ordered=False)
        t_inserted = time.perf_counter()
        t_done = wait_indexed(c, "fixed", n, 0.02, 600, serve)
        daemon_cpu = meter.stop()
        status = c.status()
    written = outputs.count_documents({"_outputs.text.fixed": {"$exists": True}})
    daemon_s = t_done - t0
    say(f"    daemon: {n / daemon_s:,.0f} docs/s ({daemon_s:.2f}s; insert_many took {t_inserted - t0:.2f}s)")
    if written != n:
        results.notes.append(f"(b) WARNING: only {written}/{n} docs have _outputs.text.fixed")
    results.ratio(f"(b) trivial docs/s vs $set, n={n}", n / daemon_s, n / raw["set_s"], "docs/s", TARGETS["b"])
    results.ratio("(b) trivial docs/s vs insert+$set", n / daemon_s, n / (raw["insert_s"] + raw["set_s"]),
                  "docs/s", None)
    results.notes.append(f"(b) daemon: insert_many {t_inserted - t0:.2f}s, then {t_done - t_inserted:.2f}s until "
                         f"the last output; {status['batches']} stream batches. raw: insert_many "
                         f"{raw['insert_s']:.2f}s, bulk $set {raw['set_s']:.2f}s")
    results.notes.append(f"(b) raw $set {raw['cpu']}")
    results.notes.append(f"(b) daemon   {daemon_cpu}")


def latency_c(serve: Serve, coll, n: int, rate: float, results: Results) -> None:
    say(f"(c) latency: {n} single inserts at ~{rate:.0f}/s, polling search(like=_id) over the socket")
    texts = sentences(n)
    latencies, insert_rtt, polls = [], [], []
    period = 1.0 / rate
    with serve.client() as c:
        start = time.perf_counter()
        for i, text in enumerate(texts):
            t0 = time.perf_counter()
            coll.insert_one({"_id": i, "text": text})
            t1 = time.perf_counter()
            tries = 0
            while True:
                tries += 1
                try:
                    c.search("latency", like={"_id": i}, n=1)
                    break
                except ApiError as exc:
                    if exc.code != "not_found":
                        raise
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"doc {i} not searchable after 30s:\n{serve.log_tail()}")
                time.sleep(0.001)
            t2 = time.perf_counter()
            latencies.append(t2 - t0)
            insert_rtt.append(t1 - t0)
            polls.append(tries)
            pause = start + (i + 1) * period - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    ms = [x * 1000 for x in latencies]
    ins = [x * 1000 for x in insert_rtt]
    p50 = pct(ms, 50)
    results.add(f"(c) insert->searchable p50, n={n}", f"{p50:.1f} ms", f"{pct(ins, 50):.1f} ms (insert_one)", "",
                f"<= {TARGETS['c_p50_ms']:.0f} ms", "PASS" if p50 <= TARGETS["c_p50_ms"] else "MISS")
    results.add("(c) insert->searchable p99", f"{pct(ms, 99):.1f} ms", f"{pct(ins, 99):.1f} ms (insert_one)")
    results.notes.append(f"(c) insert->searchable: min {min(ms):.1f} ms, max {max(ms):.1f} ms, mean polls per doc "
                         f"{np.mean(polls):.1f}; {sum(x > 50 for x in ms)} docs over 50 ms, {sum(x > 150 for x in ms)} over 150 ms; "
                         f"achieved rate {n / (time.perf_counter() - start):.1f} docs/s")


def search_d(serve: Serve, coll, n: int, n_queries: int):
    texts = [f"{t} #{i}" for i, t in enumerate(sentences(n))]
    say(f"(d) search: insert {n} docs (hashed vectors), then {n_queries} sequential socket searches")
    with serve.client() as c:
        coll.insert_many([{"_id": i, "text": t} for i, t in enumerate(texts)], ordered=False)
        wait_indexed(c, "hashed", n, 0.05, 600, serve)
        queries = np.random.default_rng(0).standard_normal((n_queries, benchmodels.DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        as_lists = [q.tolist() for q in queries]
        for q in as_lists[:20]:  # warm-up
            c.search("hashed", vector=q, n=10)
        times, top1 = [], []
        for q in as_lists:
            t0 = time.perf_counter()
            hits = c.search("hashed", vector=q, n=10)
            times.append(time.perf_counter() - t0)
            top1.append(hits[0]["_id"])
    return times, top1, queries


def faiss_d(n: int, queries: np.ndarray) -> dict:
    import faiss

    texts = [f"{t} #{i}" for i, t in enumerate(sentences(n))]
    vectors = np.vstack([benchmodels.hashed(t) for t in texts])
    index = faiss.IndexFlatIP(benchmodels.DIM)
    index.add(vectors)
    for q in queries[:20]:
        index.search(q[None, :], 10)
    times, top1 = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None, :], 10)
        times.append(time.perf_counter() - t0)
        top1.append(int(ids[0][0]))
    return {"times": times, "top1": top1}


def report_d(n: int, socket_times: list[float], socket_top1: list, raw: dict, results: Results) -> None:
    s50, s99 = pct(socket_times, 50) * 1000, pct(socket_times, 99) * 1000
    r50, r99 = pct(raw["times"], 50) * 1000, pct(raw["times"], 99) * 1000
    agree = sum(int(a == b) for a, b in zip(socket_top1, raw["top1"])) / len(socket_top1)
    results.add(f"(d) search p50, n={n}, k=10", f"{s50:.3f} ms", f"{r50:.3f} ms (faiss)", f"{s50 / r50:.1f}x")
    results.add("(d) search p99", f"{s99:.3f} ms", f"{r99:.3f} ms (faiss)", f"{s99 / r99:.1f}x")
    results.notes.append(f"(d) {len(socket_times)} sequential queries, one connection; socket {1 / np.mean(socket_times):,.0f} "
                         f"q/s vs faiss {1 / np.mean(raw['times']):,.0f} q/s; top-1 agreement {agree:.1%}")


# -- main ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of well under a minute or two")
    parser.add_argument("--only", default="abcd", help="which sections to run, e.g. `bd` (default: abcd)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (registries, daemon logs)")
    parser.add_argument("--store", choices=("inline", "collection"), default="inline",
                        help="(b-d) where outputs land: in the documents, or side collections in their own database")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    sections = args.only.lower()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)  # run the finally blocks: stop the daemon and the server

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="msbench-"))
    load_before = os.getloadavg()
    results = Results()
    server = None
    started = time.perf_counter()
    try:
        server = EmbeddedServer(work / "db").start()
        CpuMeter.server_pid = server.process.pid
        say(f"embedded server at {server.uri}; work folder {work}")
        if "a" in sections:
            bench_a(server.uri, work, sizes["a"], results)
        if set("bcd") & set(sections):
            bench_bcd(server.uri, work, sizes, sections, results, args.store)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt | SystemExit):
            say(f"FAILED: {type(exc).__name__}: {exc}")
        results.print()
        raise
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(f"modelstream bench ({'quick' if args.quick else 'full'}, outputs {args.store}), {os.cpu_count()} CPUs, python "
          f"{sys.version.split()[0]}, load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}, "
          f"{elapsed:.0f}s in all")
    results.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
