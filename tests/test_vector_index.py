"""VectorIndex: ids map both ways, replace and remove, measures keep their meaning, pre-filtering."""

from __future__ import annotations

import numpy as np
import pytest
from bson import ObjectId

from modelstream.indexers import VectorIndex


@pytest.fixture
def vectors():
    return np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)


def test_nearest_is_itself(vectors):
    """Each stored vector's nearest neighbour is its own document, with cosine similarity 1."""
    index = VectorIndex("t", "cosine")
    ids = [ObjectId() for _ in vectors]
    index.upsert(ids, vectors)
    for i in (0, 57, 199):
        top = index.search(vectors[i], 1)[0]
        assert top[0] == ids[i] and top[1] == pytest.approx(1.0, abs=1e-5)


def test_replace_and_remove(vectors):
    """Upserting an id replaces its vector; removed ids never come back."""
    index = VectorIndex("t", "l2")
    ids = list(range(len(vectors)))
    index.upsert(ids, vectors)
    index.upsert([5], vectors[9:10] + 100)
    index.remove(ids[100:])
    assert len(index) == 100
    assert index.search(vectors[9] + 100, 1)[0] == (5, pytest.approx(0.0, abs=1e-3))
    assert all(doc_id < 100 for doc_id, _ in index.search(vectors[150], 50))


def test_dot_and_l2_scores(vectors):
    """dot returns the inner product; l2 the Euclidean distance."""
    dot, l2 = VectorIndex("d", "dot"), VectorIndex("l", "l2")
    dot.upsert([1, 2], vectors[:2])
    l2.upsert([1, 2], vectors[:2])
    assert dot.search(vectors[0], 2)[0][1] == pytest.approx(float(vectors[0] @ vectors[0]), rel=1e-4)
    assert dict(l2.search(vectors[0], 2))[2] == pytest.approx(float(np.linalg.norm(vectors[0] - vectors[1])),
                                                              rel=1e-4)


def test_allowed_ids_restrict_results(vectors):
    """Pre-filtering returns only allowed ids, n of them when n exist."""
    index = VectorIndex("t")
    index.upsert(list(range(200)), vectors)
    allowed = list(range(150, 160))
    results = index.search(vectors[0], 5, allowed)
    assert len(results) == 5 and {r[0] for r in results} <= set(allowed)


def test_dimension_mismatch_is_an_error(vectors):
    """A vector of the wrong size is refused with the sizes named."""
    index = VectorIndex("t")
    index.upsert([1], vectors[:1])
    with pytest.raises(ValueError, match="16-d"):
        index.upsert([2], np.ones((1, 3), dtype=np.float32))
