"""One FAISS index per registry `indexes` entry, keyed by document `_id`.

FAISS wants int64 ids; documents have ObjectIds (or any BSON value). The index keeps a two-way
map and gives every stored vector a fresh int, so a replace is "retire the old int, add a new
one" for every index type. Flat and IVF remove retired ints at once; HNSW cannot remove, so
retired ints become tombstones that searches skip, and a background rebuild clears them when
they pass a threshold. IVF trains once it has enough vectors, with nlist fitted to that size;
when it has grown IVF_RETRAIN_GROWTH times past the size it was trained at, the same background
rebuild retrains it with an nlist fitted to the new size. Every mutation and search holds one
lock (a search never sees a half-applied batch); a rebuild copies the live vectors under the
lock, builds outside it, and swaps in under it again, replaying what changed meanwhile.

Searching within a set of allowed ids (pre-filtering) scores small sets exactly: HNSW and IVF
with a narrow selector run out of allowed neighbours and return fewer than n.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
import faiss
import numpy as np

from modelstream import log
from modelstream.errors import ApiError

logger = log.get("modelstream.index")

TOMBSTONE_REBUILD_FRACTION = 0.25  # rebuild an HNSW index once this share of its entries is dead
TOMBSTONE_REBUILD_MIN = 1000
EXACT_ALLOWED_MAX = 4096  # allowed sets up to this size are scored exactly (a few ms), never by the graph
EXACT_CHUNK = 8192  # vectors reconstructed at once when scoring exactly (bounds the temporary copy)
IDMAP_REVERSE_ENTRY_BYTES = 40  # IndexIDMap2's std::unordered_map: a 24-byte node, malloc rounding, a bucket
JOURNAL_REPLAY_UNDER_LOCK = 4  # writes made during a rebuild: at most this many batches are replayed under the lock
JOURNAL_CATCH_UP_ROUNDS = 8  # replays outside the lock before the rest is replayed under it, however long
# Retrain an auto-nlist IVF index once it holds this many times the vectors it was trained on. With
# nprobe fixed and nlist ~ 4*sqrt(n), a search costs nlist + nprobe*n/nlist; at k times the trained
# size that is (1+k)/(2*sqrt(k)) of a freshly trained index's: 1.25x at 4x, 1.74x at 10x (and k times
# while nlist is n/39). Growing geometrically, all retrains together cost under 4/3 of the last one.
IVF_RETRAIN_GROWTH = 4


@dataclass(frozen=True)
class IndexParams:
    m: int = 32  # HNSW neighbours per node
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int = 0  # IVF lists; 0: about 4*sqrt(n) when trained
    nprobe: int = 16
    extra: dict = field(default_factory=dict)


def _hashable(doc_id: Any) -> Hashable:
    if isinstance(doc_id, (dict, list)):
        return bson.encode({"_id": doc_id})
    return doc_id


def _deep_size(doc_id: Any) -> int:
    """An `_id`'s bytes: an ObjectId is a small object around a 12-byte bytes object."""
    if isinstance(doc_id, bson.ObjectId):
        return sys.getsizeof(doc_id) + sys.getsizeof(doc_id.binary)
    return sys.getsizeof(doc_id)


class VectorIndex:
    def __init__(self, name: str, measure: str = "cosine", kind: str = "flat", params: IndexParams | None = None):
        self.name = name
        self.measure = measure
        self.kind = kind
        self.params = params or IndexParams()
        self.dim: int | None = None
        self._index: Any = None
        self._trained_ivf = False
        self._trained_size = 0  # live vectors when the IVF index was last trained
        self._int_of: dict[Hashable, int] = {}
        self._id_of: dict[int, Any] = {}
        self._dead: set[int] = set()  # HNSW tombstones
        self._next = 0
        self._lock = threading.RLock()
        self._rebuilding = False
        self._rebuild_done = threading.Condition(self._lock)
        self._generation = 0  # bumped when the index is replaced wholesale: a rebuild of the old one is dropped
        self._journal: list[tuple[str, list, np.ndarray | None]] | None = None  # mutations during a rebuild
        self._plain_params: tuple[bool, Any] | None = None  # (trained, parameters) for searches without a selector

    # -- facts ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._id_of)

    def __contains__(self, doc_id: Any) -> bool:
        with self._lock:
            return _hashable(doc_id) in self._int_of

    def ids(self) -> list[Any]:
        with self._lock:
            return list(self._id_of.values())

    def nbytes(self) -> int:
        """Bytes this index holds: FAISS's structures and the `_id` maps (an estimate, cheap to compute)."""
        return self.faiss_bytes() + self.id_map_bytes()

    def faiss_bytes(self) -> int:
        """FAISS's bytes: vectors (tombstones included), the HNSW graph, IndexIDMap2's ids both ways."""
        with self._lock:
            if self._index is None:
                return 0
            n, dim = self._index.ntotal, self.dim or 0
            per_vector = dim * 4 + 8  # the float32 vector and its int64 id
            if self.kind == "hnsw":
                per_vector += self.params.m * 2 * 4 + 4 + 8 * 2  # level-0 neighbours, its level, offsets
            per_vector += IDMAP_REVERSE_ENTRY_BYTES  # IDMap2's reverse map, or IVF's hashtable direct map
            centroids = self._index.nlist * dim * 4 if self._trained_ivf else 0  # the coarse quantizer
            return n * per_vector + centroids

    def id_map_bytes(self) -> int:
        """The Python side: two dicts between `_id`s and FAISS ints, and the objects they hold.

        Every `_id` is assumed the size of one sampled `_id` (ObjectIds all are), so this is O(1).
        """
        with self._lock:
            if not self._id_of:
                return sys.getsizeof(self._int_of) + sys.getsizeof(self._id_of)
            some_int, some_id = next(iter(self._id_of.items()))
            per_entry = sys.getsizeof(some_int) + _deep_size(some_id)
            return sys.getsizeof(self._int_of) + sys.getsizeof(self._id_of) + len(self._id_of) * per_entry

    @property
    def tombstones(self) -> int:
        with self._lock:
            return len(self._dead)

    @property
    def nlist(self) -> int:
        """The trained IVF index's list count; 0 while untrained or for other kinds."""
        with self._lock:
            return self._index.nlist if self._trained_ivf else 0

    @property
    def trained_size(self) -> int:
        """Live vectors the IVF index was last trained on; 0 while untrained."""
        with self._lock:
            return self._trained_size

    def wait_rebuilt(self, timeout: float | None = None) -> bool:
        """Block until no background rebuild or retrain is running; False if `timeout` passed first."""
        with self._rebuild_done:
            return self._rebuild_done.wait_for(lambda: not self._rebuilding, timeout)

    # -- building --------------------------------------------------------------------------------

    def _metric(self) -> int:
        return faiss.METRIC_L2 if self.measure == "l2" else faiss.METRIC_INNER_PRODUCT

    def _new_faiss(self, dim: int, training: np.ndarray | None = None) -> Any:
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, self.params.m, self._metric())
            inner.hnsw.efConstruction = self.params.ef_construction
            inner.hnsw.efSearch = self.params.ef_search
            return faiss.IndexIDMap2(inner)
        if self.kind == "ivf" and training is not None:
            nlist = self._nlist_for(len(training))
            quantizer = faiss.IndexFlatL2(dim) if self.measure == "l2" else faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, self._metric())
            ivf.train(training)
            ivf.nprobe = self.params.nprobe
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
            return ivf
        inner = faiss.IndexFlatL2(dim) if self.measure == "l2" else faiss.IndexFlatIP(dim)
        return faiss.IndexIDMap2(inner)

    def _nlist_for(self, n: int) -> int:
        """The registry's nlist if it pins one; else about 4*sqrt(n), at least 39 vectors a list (FAISS's minimum)."""
        return self.params.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))

    def _ivf_train_size(self) -> int:
        return max(256, 39 * (self.params.nlist or 64))

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"index {self.name} holds {self.dim}-d vectors, got {vectors.shape[1]}-d")
        if self.measure == "cosine":
            vectors = vectors.copy()
            faiss.normalize_L2(vectors)
        return vectors

    # -- mutations ---------------------------------------------------------------------------------

    def upsert(self, doc_ids: Sequence[Any], vectors: np.ndarray | Sequence[np.ndarray]) -> None:
        """Add or replace the vectors of these documents, atomically for searches; unchanged ones cost nothing."""
        if len(doc_ids) == 0:
            return
        matrix = np.vstack([np.asarray(v, dtype=np.float32).ravel() for v in vectors])
        with self._lock:
            if self._index is None:
                self.dim = matrix.shape[1]
                self._index = self._new_faiss(self.dim)
            matrix = self._prepare(matrix)
            keep = np.ones(len(doc_ids), dtype=bool)
            replaced = []
            for row, doc_id in enumerate(doc_ids):
                old = self._int_of.get(_hashable(doc_id))
                if old is None:
                    continue
                if np.array_equal(self._index.reconstruct(old), matrix[row]):
                    keep[row] = False  # the same vector again (a replay, a rescan): nothing to do
                else:
                    replaced.append(doc_id)
            self._retire(replaced)
            ids = [d for d, k in zip(doc_ids, keep) if k]
            if not ids:
                return
            matrix = matrix[keep]
            ints = np.arange(self._next, self._next + len(ids), dtype=np.int64)
            self._next += len(ids)
            for i, doc_id in zip(ints.tolist(), ids):
                self._int_of[_hashable(doc_id)] = i
                self._id_of[i] = doc_id
            self._index.add_with_ids(matrix, ints)
            if self._journal is not None:
                self._journal.append(("add", ints.tolist(), matrix))
            if self.kind == "ivf" and not self._trained_ivf and len(self._id_of) >= self._ivf_train_size():
                self._train_ivf()
            self._maybe_retrain_ivf()

    def remove(self, doc_ids: Iterable[Any]) -> int:
        with self._lock:
            return self._retire(doc_ids)

    def _retire(self, doc_ids: Iterable[Any]) -> int:
        ints = []
        for doc_id in doc_ids:
            i = self._int_of.pop(_hashable(doc_id), None)
            if i is not None:
                del self._id_of[i]
                ints.append(i)
        if not ints or self._index is None:
            return len(ints)
        if self._journal is not None:
            self._journal.append(("remove", ints, None))
        if self.kind == "hnsw":
            self._dead.update(ints)
            self._maybe_rebuild()
        else:
            self._index.remove_ids(np.asarray(ints, dtype=np.int64))
        return len(ints)

    def clear(self) -> None:
        with self._lock:
            self._index, self.dim, self._trained_ivf, self._trained_size = None, None, False, 0
            self._generation += 1
            self._int_of.clear()
            self._id_of.clear()
            self._dead.clear()

    def _live_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        ints = np.fromiter(self._id_of.keys(), dtype=np.int64, count=len(self._id_of))
        if len(ints) == 0:
            return ints, np.zeros((0, self.dim or 0), dtype=np.float32)
        return ints, self._index.reconstruct_batch(ints)  # one call: this runs under the lock

    def _train_ivf(self) -> None:
        """IVF needs training data: it stays flat until there is enough, then trains once on what it has."""
        ints, matrix = self._live_matrix()
        index = self._new_faiss(self.dim, training=matrix)
        index.add_with_ids(matrix, ints)
        self._index, self._trained_ivf, self._trained_size = index, True, len(ints)
        logger.info("ivf trained", index=self.name, vectors=len(ints), nlist=index.nlist)

    def _maybe_retrain_ivf(self) -> None:
        """Retrain in the background once the index outgrew its lists (only an automatic nlist changes)."""
        if not self._trained_ivf or self._rebuilding or self.params.nlist:
            return
        size = len(self._id_of)
        if size >= IVF_RETRAIN_GROWTH * self._trained_size and self._nlist_for(size) > self._index.nlist:
            self._start_rebuild("ivf outgrew its lists", trained_size=self._trained_size, nlist=self._index.nlist)

    def _maybe_rebuild(self) -> None:
        dead = len(self._dead)
        if self._rebuilding or dead < TOMBSTONE_REBUILD_MIN or dead < TOMBSTONE_REBUILD_FRACTION * self._index.ntotal:
            return
        self._start_rebuild("tombstones", tombstones=dead)

    def _start_rebuild(self, reason: str, **facts: Any) -> None:
        """Copy the live vectors (under the lock) and build a fresh index from them on a thread."""
        self._rebuilding = True
        ints, matrix = self._live_matrix()
        self._journal = []
        logger.info("index rebuild started", index=self.name, reason=reason, vectors=len(ints), **facts)
        training = matrix if self._trained_ivf else None  # a trained IVF index retrains on every live vector
        threading.Thread(target=self._rebuild, args=(ints, matrix, training, self._generation),
                         name=f"rebuild-{self.name}", daemon=True).start()

    def _rebuild(self, ints: np.ndarray, matrix: np.ndarray, training: np.ndarray | None, generation: int) -> None:
        """Build a tombstone-free (IVF: retrained) copy outside the lock; swap it in, replaying later changes."""
        # Half the cores at most (OpenMP's setting is per thread): the stream and searches keep the rest;
        # two full OpenMP teams on two cores oversubscribe them and stall both.
        faiss.omp_set_num_threads(max(1, faiss.omp_get_max_threads() // 2))
        swapped = False
        try:
            fresh = self._new_faiss(matrix.shape[1], training=training)
            fresh.add_with_ids(matrix, ints)
            swapped = self._catch_up_and_swap(fresh, training, generation)
        except Exception:  # noqa: BLE001 - a thread's exception is otherwise lost; the old index keeps serving
            logger.exception("index rebuild failed: keeping the old index", index=self.name)
        finally:
            with self._lock:
                self._journal = None
                self._rebuilding = False
                if swapped:  # writes during a long rebuild may already call for the next one; don't wait for more
                    self._maybe_rebuild()
                    self._maybe_retrain_ivf()
                self._rebuild_done.notify_all()

    def _catch_up_and_swap(self, fresh: Any, training: np.ndarray | None, generation: int) -> bool:
        """Replay the journal onto `fresh` outside the lock while much is pending, the last entries under it.

        A long build (an IVF retrain takes seconds) leaves a long journal; replaying it all under the
        lock would stall searches and the stream for as long as adding those vectors takes.
        """
        dead: set[int] = set()
        done = 0
        for round_no in range(JOURNAL_CATCH_UP_ROUNDS + 1):
            with self._lock:
                if generation != self._generation:  # cleared or loaded meanwhile: the copy stands for nothing
                    return False
                pending = self._journal[done:]
                if len(pending) <= JOURNAL_REPLAY_UNDER_LOCK or round_no == JOURNAL_CATCH_UP_ROUNDS:
                    dead |= self._replay(fresh, pending)
                    self._swap_in(fresh, dead, training)
                    return True
            dead |= self._replay(fresh, pending)  # `fresh` is this thread's alone until swapped in
            done += len(pending)
        return False  # not reached: the last round swaps under the lock

    def _replay(self, fresh: Any, entries: list) -> set[int]:
        """Apply journal entries to `fresh`, in order; HNSW's removals come back as tombstones."""
        dead: set[int] = set()
        for op, op_ints, op_matrix in entries:
            op_ints = np.asarray(op_ints, dtype=np.int64)
            if op == "add":
                fresh.add_with_ids(op_matrix, op_ints)
            elif self.kind == "hnsw":
                dead.update(op_ints.tolist())
            else:
                fresh.remove_ids(op_ints)
        return dead

    def _swap_in(self, fresh: Any, dead: set[int], training: np.ndarray | None) -> None:
        self._index, self._dead = fresh, dead
        if training is not None:
            self._trained_size = len(training)
        logger.info("index rebuilt", index=self.name, vectors=len(self._id_of), tombstones=len(dead),
                    nlist=getattr(fresh, "nlist", None))

    # -- reading -------------------------------------------------------------------------------------

    def vector_of(self, doc_id: Any) -> np.ndarray | None:
        with self._lock:
            i = self._int_of.get(_hashable(doc_id))
            return None if i is None else self._index.reconstruct(i)

    def sample_ids(self, k: int, rng: random.Random | None = None) -> list[Any]:
        """Up to k live `_id`s drawn uniformly, without copying the id map (to estimate a filter's selectivity)."""
        rng = rng or random
        with self._lock:
            if len(self._id_of) <= k:
                return list(self._id_of.values())
            picked: dict[int, Any] = {}
            for _ in range(16):  # ints retired by replaces and removals leave holes: draw again for those
                for i in rng.sample(range(self._next), min(self._next, 2 * k)):
                    if i in self._id_of:
                        picked[i] = self._id_of[i]
                        if len(picked) == k:
                            return list(picked.values())
            return list(picked.values())

    def search(self, vector: np.ndarray, n: int, allowed: Iterable[Any] | None = None) -> list[tuple[Any, float]]:
        """The n nearest live documents as (_id, score), best first; `allowed` restricts to those ids.

        Scores keep their measure's meaning: cosine similarity, inner product, or L2 distance. With
        `allowed`, n results come back whenever n allowed ids are in the index.
        """
        with self._lock:
            if self._index is None or not self._id_of or n <= 0:
                return []
            query = self._prepare(np.asarray(vector, dtype=np.float32).ravel())
            if allowed is not None:
                return self._search_allowed(query, n, allowed)
            selector = None
            if self._dead:
                selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._dead, dtype=np.int64)))
            return self._nearest(query, min(n, len(self._id_of)), selector)

    def _nearest(self, query: np.ndarray, k: int, selector: Any) -> list[tuple[Any, float]]:
        scores, found = self._index.search(query, k, params=self._search_params(selector))
        results = []
        for score, i in zip(scores[0].tolist(), found[0].tolist()):
            doc_id = self._id_of.get(i)
            if i < 0 or doc_id is None:
                continue
            results.append((doc_id, self._score(score)))
        return results

    def _score(self, raw: float) -> float:
        """FAISS's L2 is squared; the API's is the distance."""
        return float(np.sqrt(max(raw, 0.0))) if self.measure == "l2" else float(raw)

    def _search_allowed(self, query: np.ndarray, n: int, allowed: Iterable[Any]) -> list[tuple[Any, float]]:
        ints = np.fromiter((self._int_of[k] for k in map(_hashable, allowed) if k in self._int_of), dtype=np.int64)
        if len(ints) == 0:
            return []
        want = min(n, len(ints))
        if len(ints) > EXACT_ALLOWED_MAX:
            results = self._nearest(query, want, faiss.IDSelectorBatch(ints))
            if len(results) >= want:
                return results
            logger.debug("allowed set scored exactly", index=self.name, allowed=len(ints), found=len(results))
        return self._exact(query, ints, want)

    def _exact(self, query: np.ndarray, ints: np.ndarray, n: int) -> list[tuple[Any, float]]:
        """Score every allowed vector against the query (brute force over the allowed set only)."""
        parts = []
        for start in range(0, len(ints), EXACT_CHUNK):
            matrix = self._index.reconstruct_batch(ints[start:start + EXACT_CHUNK])
            if self.measure == "l2":
                parts.append(((matrix - query) ** 2).sum(axis=1))
            else:
                parts.append(matrix @ query[0])
        scores = np.concatenate(parts)
        ranked = scores if self.measure == "l2" else -scores  # best first: nearest, or largest product
        top = np.argpartition(ranked, n - 1)[:n] if n < len(ranked) else np.arange(len(ranked))
        top = top[np.argsort(ranked[top], kind="stable")]
        return [(self._id_of[int(ints[i])], self._score(float(scores[i]))) for i in top]

    def _search_params(self, selector: Any) -> Any:
        if selector is None:  # the common case: one shared object (FAISS only reads it) instead of one per search
            if self._plain_params is None or self._plain_params[0] != self._trained_ivf:  # IVF changes on training
                self._plain_params = (self._trained_ivf, self._build_params(None))
            return self._plain_params[1]
        return self._build_params(selector)

    def _build_params(self, selector: Any) -> Any:
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.ef_search)
        if self.kind == "ivf" and self._trained_ivf:
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.params.nprobe)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def check_dim(self, vector: np.ndarray) -> None:
        if self.dim is not None and np.asarray(vector).size != self.dim:
            raise ApiError("bad_request", f"index {self.name} holds {self.dim}-d vectors, got {np.asarray(vector).size}")

    # -- persistence (see snapshot.py) -----------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """Everything needed to rebuild this object, captured consistently under the lock."""
        with self._lock:
            ints = np.fromiter(self._id_of.keys(), dtype=np.int64, count=len(self._id_of))
            return {
                "faiss": None if self._index is None else faiss.serialize_index(self._index),
                "ints": ints,
                "ids": [self._id_of[int(i)] for i in ints],
                "dead": np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)),
                "next": self._next,
                "dim": self.dim,
                "trained_ivf": self._trained_ivf,
                "trained_size": self._trained_size,
            }

    def import_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._index = None if state["faiss"] is None else faiss.deserialize_index(state["faiss"])
            self.dim = state["dim"]
            self._trained_ivf = state["trained_ivf"]
            # snapshots from before retraining lack the size: they were trained once, at the first threshold
            self._trained_size = state.get("trained_size") or (self._ivf_train_size() if self._trained_ivf else 0)
            self._generation += 1
            self._next = state["next"]
            ints = state["ints"].tolist()
            self._id_of = dict(zip(ints, state["ids"]))
            self._int_of = {_hashable(doc_id): i for i, doc_id in self._id_of.items()}
            self._dead = set(state["dead"].tolist())
            if self._index is not None and self.kind == "ivf" and self._trained_ivf:
                self._index.nprobe = self.params.nprobe
                self._maybe_retrain_ivf()  # an old snapshot may already be many times its training size
