"""One FAISS index per registry `indexes` entry, keyed by document `_id`.

FAISS wants int64 ids; documents have ObjectIds (or any BSON value). The index keeps a two-way
map. Every mutation and search holds one lock, so a search never sees a half-applied batch;
batches are applied in one call so the lock is held briefly.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import bson
import faiss
import numpy as np

from modelstream.errors import ApiError


def _hashable(doc_id: Any) -> Hashable:
    if isinstance(doc_id, Hashable) and not isinstance(doc_id, (dict, list)):
        return doc_id
    return bson.encode({"_id": doc_id})


class VectorIndex:
    def __init__(self, name: str, measure: str = "cosine", kind: str = "flat"):
        self.name = name
        self.measure = measure
        self.kind = kind
        self.dim: int | None = None
        self._index: faiss.IndexIDMap2 | None = None
        self._int_of: dict[Hashable, int] = {}
        self._id_of: dict[int, Any] = {}
        self._next = 0
        self._lock = threading.RLock()

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
        with self._lock:
            return 0 if self._index is None else self._index.ntotal * (self.dim or 0) * 4

    def _create(self, dim: int) -> None:
        inner = faiss.IndexFlatL2(dim) if self.measure == "l2" else faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIDMap2(inner)
        self.dim = dim

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

    def upsert(self, doc_ids: Sequence[Any], vectors: np.ndarray | Sequence[np.ndarray]) -> None:
        """Add or replace the vectors of these documents, atomically for searches."""
        if len(doc_ids) == 0:
            return
        matrix = np.vstack([np.asarray(v, dtype=np.float32).ravel() for v in vectors])
        with self._lock:
            if self._index is None:
                self._create(matrix.shape[1])
            matrix = self._prepare(matrix)
            self._remove_locked(doc_ids)
            ints = np.empty(len(doc_ids), dtype=np.int64)
            for i, doc_id in enumerate(doc_ids):
                key = _hashable(doc_id)
                ints[i] = self._next
                self._int_of[key] = self._next
                self._id_of[self._next] = doc_id
                self._next += 1
            self._index.add_with_ids(matrix, ints)

    def remove(self, doc_ids: Iterable[Any]) -> int:
        with self._lock:
            return self._remove_locked(doc_ids)

    def _remove_locked(self, doc_ids: Iterable[Any]) -> int:
        ints = []
        for doc_id in doc_ids:
            i = self._int_of.pop(_hashable(doc_id), None)
            if i is not None:
                del self._id_of[i]
                ints.append(i)
        if ints and self._index is not None:
            self._index.remove_ids(np.asarray(ints, dtype=np.int64))
        return len(ints)

    def clear(self) -> None:
        with self._lock:
            self._index, self.dim = None, None
            self._int_of.clear()
            self._id_of.clear()

    def vector_of(self, doc_id: Any) -> np.ndarray | None:
        with self._lock:
            i = self._int_of.get(_hashable(doc_id))
            return None if i is None else self._index.reconstruct(i)

    def search(self, vector: np.ndarray, n: int, allowed: Iterable[Any] | None = None) -> list[tuple[Any, float]]:
        """The n nearest documents as (_id, score); `allowed` restricts to those ids (pre-filtering).

        Scores keep their measure's meaning: cosine similarity, inner product, or L2 distance.
        """
        with self._lock:
            if self._index is None or self._index.ntotal == 0 or n <= 0:
                return []
            query = self._prepare(np.asarray(vector, dtype=np.float32).ravel())
            params = None
            if allowed is not None:
                ints = [self._int_of[k] for k in map(_hashable, allowed) if k in self._int_of]
                if not ints:
                    return []
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(ints, dtype=np.int64)))
            k = min(n, self._index.ntotal)
            scores, ints_found = self._index.search(query, k, params=params)
            results = []
            for score, i in zip(scores[0], ints_found[0]):
                if i < 0:
                    continue
                value = float(np.sqrt(max(score, 0.0))) if self.measure == "l2" else float(score)
                results.append((self._id_of[int(i)], value))
            return results

    def check_dim(self, vector: np.ndarray) -> None:
        if self.dim is not None and np.asarray(vector).size != self.dim:
            raise ApiError("bad_request", f"index {self.name} holds {self.dim}-d vectors, got {np.asarray(vector).size}")
