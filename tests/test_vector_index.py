"""VectorIndex: ids map both ways, replace and remove, measures keep their meaning, pre-filtering."""

from __future__ import annotations

import struct
import threading

import bson
import faiss
import numpy as np
import pytest
from bson import ObjectId

from modelstream.indexers import IndexParams, VectorIndex, vector_index


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


# -- IVF retraining as the index grows ------------------------------------------------------------------

EVERY_LIST = IndexParams(nprobe=1 << 16)  # FAISS caps nprobe at nlist: every search probes every list (exact)


def _grow(index, mirror, data, start, stop, batch=500):
    """Upsert rows [start, stop) in batches, letting each background retrain finish before the next batch."""
    for at in range(start, stop, batch):
        rows = range(at, min(at + batch, stop))
        index.upsert(list(rows), data[rows.start:rows.stop])
        mirror.upsert(list(rows), data[rows.start:rows.stop])
        assert index.wait_rebuilt(timeout=60)


def _assert_same_as_flat(index, flat, queries, k=10):
    """Same ids, and (probing every list) the same nearest neighbours and scores as the exact index."""
    assert sorted(index.ids()) == sorted(flat.ids())
    for q in queries:
        found, truth = index.search(q, k), flat.search(q, k)
        assert [i for i, _ in found] == [i for i, _ in truth]
        # abs: FAISS's flat L2 expands |x-y|^2, so a self-distance is sqrt(rounding), ~0.002
        assert [s for _, s in found] == pytest.approx([s for _, s in truth], abs=5e-3)


@pytest.fixture
def growing():
    return np.random.default_rng(7).normal(size=(13000, 16)).astype(np.float32)


@pytest.mark.parametrize("measure", ["l2", "cosine"])
def test_ivf_retrains_when_it_outgrows_its_lists(growing, measure):
    """Trained small, grown 4x past that: retrained with more lists, every vector kept, answers exact."""
    index, flat = VectorIndex("i", measure, "ivf", EVERY_LIST), VectorIndex("f", measure)
    _grow(index, flat, growing, 0, 3000)
    first_nlist, first_size = index.nlist, index.trained_size
    assert first_nlist > 0 and first_size <= 3000
    _grow(index, flat, growing, 3000, vector_index.IVF_RETRAIN_GROWTH * first_size - 500)
    assert (index.nlist, index.trained_size) == (first_nlist, first_size)  # not yet 4x: no retrain
    _grow(index, flat, growing, vector_index.IVF_RETRAIN_GROWTH * first_size - 500, 13000)
    assert index.nlist > first_nlist and index.trained_size >= vector_index.IVF_RETRAIN_GROWTH * first_size
    assert len(index) == 13000 and index._index.ntotal == 13000
    _assert_same_as_flat(index, flat, growing[::1300])
    serialized = faiss.serialize_index(index._index).nbytes  # vectors, ids and centroids, no direct map
    assert serialized <= index.faiss_bytes() <= serialized + 13000 * vector_index.IDMAP_REVERSE_ENTRY_BYTES


def _hold_background_builds(index, monkeypatch):
    """Make the rebuild thread signal `started` once it has copied the vectors, then wait for `go`."""
    started, go = threading.Event(), threading.Event()
    build = index._new_faiss

    def held_build(dim, training=None):  # only a background rebuild runs off the main thread
        if threading.current_thread() is not threading.main_thread():
            started.set()
            assert go.wait(timeout=60)
        return build(dim, training)

    monkeypatch.setattr(index, "_new_faiss", held_build)
    return started, go


def test_a_retrain_outgrown_while_it_ran_is_followed_by_another(monkeypatch):
    """Writes during a retrain that reach 4x its size start the next retrain as it ends, not at the next write."""
    data = np.random.default_rng(8).normal(size=(41000, 8)).astype(np.float32)
    index, flat = VectorIndex("i", "l2", "ivf", EVERY_LIST), VectorIndex("f", "l2")
    _grow(index, flat, data, 0, 2500)
    trigger = vector_index.IVF_RETRAIN_GROWTH * index.trained_size
    started, go = _hold_background_builds(index, monkeypatch)
    for target in (index, flat):
        target.upsert(list(range(2500, trigger)), data[2500:trigger])  # the retrain starts, and is held
    assert started.wait(timeout=60)
    for target in (index, flat):
        target.upsert(list(range(trigger, 41000)), data[trigger:])  # 4x the held retrain's size: outgrown
    go.set()
    assert index.wait_rebuilt(timeout=120)  # waits for the follow-up too
    assert index.trained_size == 41000 and len(index) == 41000
    _assert_same_as_flat(index, flat, data[::4100])


@pytest.mark.parametrize("under_lock", [0, vector_index.JOURNAL_REPLAY_UNDER_LOCK])  # 0: replayed outside the lock
def test_writes_during_a_retrain_are_kept(growing, monkeypatch, under_lock):
    """Adds, replaces and removes made while the retrain runs: searched at once, and all in the new index."""
    monkeypatch.setattr(vector_index, "JOURNAL_REPLAY_UNDER_LOCK", under_lock)
    index, flat = VectorIndex("i", "l2", "ivf", EVERY_LIST), VectorIndex("f", "l2")
    _grow(index, flat, growing, 0, 3000)
    old_nlist, trigger = index.nlist, vector_index.IVF_RETRAIN_GROWTH * index.trained_size
    started, go = _hold_background_builds(index, monkeypatch)
    _grow(index, flat, growing, 3000, trigger - 500)
    index.upsert(list(range(trigger - 500, trigger)), growing[trigger - 500:trigger])
    flat.upsert(list(range(trigger - 500, trigger)), growing[trigger - 500:trigger])
    assert started.wait(timeout=60)  # the retrain has copied the vectors and is held before training

    more = range(trigger, trigger + 700)
    for target in (index, flat):
        target.upsert(list(more), growing[more.start:more.stop])  # new documents
        target.upsert([5, 6], growing[[12000, 12001]])  # replaced vectors
        target.remove(list(range(100, 400)) + [trigger + 3])  # old and new documents removed
    assert index.nlist == old_nlist  # still the old index, with every write already visible
    assert index.search(growing[12000], 1)[0][0] in (5, 12000)
    assert 150 not in [i for i, _ in index.search(growing[150], 5)]

    go.set()
    assert index.wait_rebuilt(timeout=60)
    assert index.nlist > old_nlist and len(index) == len(flat) == index._index.ntotal == trigger + 700 - 301
    _assert_same_as_flat(index, flat, growing[[5, 6, 150, trigger + 3, trigger + 10, 12000, 12500]])


def test_retrained_snapshot_round_trips_and_old_snapshots_still_load(tmp_path, growing):
    """A retrained index loads back as it was; a snapshot without its trained size loads and retrains."""
    from modelstream.indexers import load_snapshot, save_snapshot
    from modelstream.indexers.snapshot import MAGIC

    index, flat = VectorIndex("s", "cosine", "ivf", EVERY_LIST), VectorIndex("f", "cosine")
    _grow(index, flat, growing, 0, 13000)
    path = tmp_path / "s.snapshot"
    save_snapshot(index, path, "v1")
    loaded = VectorIndex("s", "cosine", "ivf", EVERY_LIST)
    assert load_snapshot(loaded, path, "v1") is not None and loaded.wait_rebuilt(timeout=0)  # nothing to redo
    assert (loaded.nlist, loaded.trained_size) == (index.nlist, index.trained_size)
    _assert_same_as_flat(loaded, flat, growing[::1300])

    first = VectorIndex("s", "cosine", "ivf", EVERY_LIST)  # an index that trained once, at its first threshold
    _grow(first, flat, growing, 0, 3000)
    first._maybe_retrain_ivf = lambda: None  # grown as the code before retraining did
    first.upsert(list(range(3000, 13000)), growing[3000:])
    save_snapshot(first, path, "v1")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[8:16])
    meta = bson.decode(raw[16:16 + size])
    del meta["trained_size"]  # as written before retraining existed
    header = bson.encode(meta)
    path.write_bytes(MAGIC + struct.pack("<Q", len(header)) + header + raw[16 + size:])
    old = VectorIndex("s", "cosine", "ivf", EVERY_LIST)
    assert load_snapshot(old, path, "v1") is not None and old.wait_rebuilt(timeout=60)
    assert old.nlist > first.nlist and old.trained_size == 13000
    _assert_same_as_flat(old, flat, growing[::1300])


def test_pinned_nlist_is_never_retrained(growing):
    """A registry that sets nlist keeps it however large the index grows."""
    index, flat = VectorIndex("p", "l2", "ivf", IndexParams(nlist=32)), VectorIndex("f", "l2")
    _grow(index, flat, growing, 0, 13000)
    assert index.nlist == 32 and index.trained_size < 13000 / vector_index.IVF_RETRAIN_GROWTH
