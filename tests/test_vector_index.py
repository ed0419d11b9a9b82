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


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("measure", ["cosine", "l2"])
def test_narrow_allowed_sets_return_n_exactly(kind, measure):
    """A few allowed ids among thousands: n results, the exact best (HNSW and IVF alone run out of neighbours)."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(5000, 16)).astype(np.float32)
    index, flat = VectorIndex("a", measure, kind), VectorIndex("f", measure)
    index.upsert(list(range(5000)), data)
    flat.upsert(list(range(5000)), data)
    for q in range(5):
        allowed = rng.choice(5000, 12, replace=False).tolist()
        results = index.search(data[q], 10, allowed)
        assert len(results) == 10 and {r[0] for r in results} <= set(allowed)
        truth = flat.search(data[q], 10, allowed)
        assert [r[0] for r in results] == [r[0] for r in truth]
        assert [r[1] for r in results] == pytest.approx([r[1] for r in truth], abs=1e-4)


def test_sample_ids_are_live_and_distinct():
    """Samples (for selectivity estimates) never hold removed or replaced-away entries, nor repeats."""
    rng = np.random.default_rng(6)
    index = VectorIndex("s", "cosine", "hnsw")
    index.upsert(list(range(2000)), rng.normal(size=(2000, 8)).astype(np.float32))
    index.remove(list(range(0, 2000, 2)))
    index.upsert(list(range(1, 200, 2)), rng.normal(size=(100, 8)).astype(np.float32))  # replaced: new ints
    sample = index.sample_ids(64)
    assert len(sample) == 64 == len(set(sample)) and all(i % 2 == 1 for i in sample)
    assert sorted(index.sample_ids(5000)) == list(range(1, 2000, 2))


def test_nbytes_counts_faiss_and_the_id_maps(vectors):
    """The memory report covers the vectors and the `_id` maps, and grows with the index."""
    index = VectorIndex("m", "cosine", "hnsw")
    ids = [ObjectId() for _ in vectors]
    index.upsert(ids[:100], vectors[:100])
    small = index.nbytes()
    index.upsert(ids[100:], vectors[100:])
    assert index.nbytes() > small >= 100 * 16 * 4 and index.id_map_bytes() > 100 * 12


def test_dimension_mismatch_is_an_error(vectors):
    """A vector of the wrong size is refused with the sizes named."""
    index = VectorIndex("t")
    index.upsert([1], vectors[:1])
    with pytest.raises(ValueError, match="16-d"):
        index.upsert([2], np.ones((1, 3), dtype=np.float32))


def _recall(index, flat, queries, k=10):
    hits = 0
    for q in queries:
        truth = {i for i, _ in flat.search(q, k)}
        hits += len(truth & {i for i, _ in index.search(q, k)})
    return hits / (k * len(queries))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_against_flat(kind):
    """hnsw and ivf find at least 95% of flat's top 10 on clustered data."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 32))
    data = (centres[rng.integers(0, 50, 5000)] + 0.3 * rng.normal(size=(5000, 32))).astype(np.float32)
    flat, approx = VectorIndex("f", "cosine"), VectorIndex("a", "cosine", kind)
    flat.upsert(list(range(5000)), data)
    approx.upsert(list(range(5000)), data)
    assert _recall(approx, flat, data[:100]) >= 0.95


def test_ivf_stays_flat_until_trained():
    """IVF answers exactly before it has enough vectors to train, then trains once."""
    rng = np.random.default_rng(2)
    data = rng.normal(size=(3000, 8)).astype(np.float32)
    index = VectorIndex("i", "l2", "ivf")
    index.upsert(list(range(100)), data[:100])
    assert not index._trained_ivf and index.search(data[5], 1)[0][0] == 5
    index.upsert(list(range(100, 3000)), data[100:])
    assert index._trained_ivf and len(index) == 3000
    index.remove([7])
    assert 7 not in [i for i, _ in index.search(data[7], 5)] and len(index) == 2999


def test_hnsw_tombstones_are_skipped_and_rebuilt_away():
    """Removed HNSW entries never come back; past the threshold a background rebuild clears them."""
    import time

    from modelstream.indexers import vector_index

    rng = np.random.default_rng(3)
    data = rng.normal(size=(4000, 16)).astype(np.float32)
    index = VectorIndex("h", "cosine", "hnsw")
    index.upsert(list(range(4000)), data)
    index.remove(list(range(500)))
    assert index.tombstones == 500
    assert all(i >= 500 for i, _ in index.search(data[10], 20))
    index.remove(list(range(500, 1500)))  # 1500 dead of 4000: over the threshold
    deadline = time.monotonic() + 30
    while index.tombstones and time.monotonic() < deadline:
        time.sleep(0.05)
    assert index.tombstones == 0 and len(index) == 2500
    assert vector_index.TOMBSTONE_REBUILD_MIN <= 1500
    assert index.search(data[2000], 1)[0][0] == 2000


def test_unchanged_upsert_is_a_no_op(vectors):
    """Upserting the same vector again (a replay or a rescan) keeps the same internal entry."""
    index = VectorIndex("t", "cosine", "hnsw")
    index.upsert([1, 2], vectors[:2])
    index.upsert([1, 2], vectors[:2])
    assert index.tombstones == 0 and len(index) == 2


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_snapshot_round_trip(tmp_path, kind):
    """A saved index loads back with the same ids, vectors, answers and tombstones."""
    from modelstream.indexers import load_snapshot, save_snapshot

    rng = np.random.default_rng(4)
    data = rng.normal(size=(3000, 8)).astype(np.float32)
    ids = [ObjectId() for _ in data]
    index = VectorIndex("s", "cosine", kind)
    index.upsert(ids, data)
    index.remove(ids[:10])
    save_snapshot(index, tmp_path / "s.snapshot", "v1", resume_token={"_data": "abc"})
    loaded = VectorIndex("s", "cosine", kind)
    meta = load_snapshot(loaded, tmp_path / "s.snapshot", "v1")
    assert meta["resume_token"] == {"_data": "abc"}
    assert len(loaded) == len(index) == 2990 and loaded.tombstones == index.tombstones
    assert loaded.search(data[100], 3) == index.search(data[100], 3)
    assert ids[0] not in loaded


def test_corrupt_or_mismatched_snapshot_is_refused(tmp_path, vectors):
    """A damaged file, another model version or another measure: not loaded, index left empty."""
    from modelstream.indexers import load_snapshot, save_snapshot

    index = VectorIndex("s", "cosine")
    index.upsert(list(range(len(vectors))), vectors)
    path = tmp_path / "s.snapshot"
    save_snapshot(index, path, "v1")
    assert load_snapshot(VectorIndex("s", "cosine"), path, "v2") is None
    assert load_snapshot(VectorIndex("s", "l2"), path, "v1") is None
    path.write_bytes(path.read_bytes()[:100])
    fresh = VectorIndex("s", "cosine")
    assert load_snapshot(fresh, path, "v1") is None and len(fresh) == 0
