"""Filtered search against a real database: pre- or post-filter chosen by selectivity, n results when n exist."""

from __future__ import annotations

import random

import numpy as np
import pytest

from modelstream.api import filtered_search
from modelstream.api.filtered_search import FilteredSearch, matching_ids
from modelstream.errors import ApiError
from modelstream.indexers import VectorIndex

N_DOCS = 1000
DIM = 16


@pytest.fixture
def corpus(db):
    """1,000 documents: `half` matches every other one, `rare` 10 (1%), `few` 3; vectors in the index."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N_DOCS, DIM)).astype(np.float32)
    docs = [{"i": i, "half": i % 2 == 0, "rare": i % 100 == 0, "few": i in (5, 500, 995)}
            for i in range(N_DOCS)]
    ids = db.docs.insert_many(docs).inserted_ids
    return db.docs, ids, vectors, docs


def build(kind, ids, vectors):
    index = VectorIndex("t", "cosine", kind)
    index.upsert(ids, vectors)
    return index


def exact_top(ids, vectors, docs, query, field, n):
    """The true n best matching documents by cosine similarity, best first."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    order = [i for i in np.argsort(-scores) if docs[i][field]]
    return [ids[i] for i in order[:n]]


def check(result, docs_by_id, field, n):
    """Exactly n results, every one matching, best first."""
    assert len(result.hits) == n
    assert all(docs_by_id[doc_id][field] for doc_id, _ in result.hits)
    scores = [score for _, score in result.hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_broad_filter_post_filters(corpus, kind):
    """A filter matching half the documents over-fetches nearest candidates and keeps the matching ones."""
    collection, ids, vectors, docs = corpus
    index = build(kind, ids, vectors)
    by_id = dict(zip(ids, docs))
    for q in (3, 400, 801):
        result = FilteredSearch(random.Random(q)).search(index, collection, vectors[q], 10, {"half": True}, set())
        assert result.strategy == "post"
        check(result, by_id, "half", 10)
        if kind == "flat":
            assert [d for d, _ in result.hits] == exact_top(ids, vectors, docs, vectors[q], "half", 10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_narrow_filter_pre_filters(corpus, kind):
    """A filter matching 1% of the documents asks the database for its ids, and scores those."""
    collection, ids, vectors, docs = corpus
    index = build(kind, ids, vectors)
    by_id = dict(zip(ids, docs))
    for q in (3, 400, 801):
        result = FilteredSearch(random.Random(q)).search(index, collection, vectors[q], 10, {"rare": True}, set())
        assert result.strategy == "pre"
        check(result, by_id, "rare", 10)
        assert [d for d, _ in result.hits] == exact_top(ids, vectors, docs, vectors[q], "rare", 10)


@pytest.mark.parametrize("query", [{"few": True}, {"half": True, "few": True}, {"i": {"$gte": 998}}])
def test_fewer_matches_than_n_returns_them_all(corpus, query):
    """A filter that matches fewer than n documents returns every one of them."""
    collection, ids, vectors, docs = corpus
    index = build("hnsw", ids, vectors)
    expected = set(matching_ids(collection, query, ids))
    result = FilteredSearch(random.Random(0)).search(index, collection, vectors[0], 10, query, set())
    assert {d for d, _ in result.hits} == expected and 0 < len(expected) < 10


def test_post_filter_short_near_the_query_grows_then_falls_back(db):
    """Broad on average, absent near the query: over-fetch grows, then the search falls back to pre-filtering."""
    rng = np.random.default_rng(8)
    here, there = rng.normal(size=DIM), rng.normal(size=DIM)
    near = (here + 0.05 * rng.normal(size=(600, DIM))).astype(np.float32)  # none of these match
    far = (there + 0.05 * rng.normal(size=(600, DIM))).astype(np.float32)
    ids = db.docs.insert_many([{"side": "near"} for _ in near] + [{"side": "far"} for _ in far]).inserted_ids
    index = build("flat", ids, np.vstack([near, far]))
    result = FilteredSearch(random.Random(1)).search(index, db.docs, here, 10, {"side": "far"}, set())
    assert result.strategy == "pre"
    assert len(result.hits) == 10 and {d for d, _ in result.hits} <= set(ids[600:])


def test_excluded_ids_never_come_back(corpus):
    """Searching like a stored document leaves it out, and still returns n others."""
    from modelstream.daemon.documents import id_key

    collection, ids, vectors, docs = corpus
    index = build("flat", ids, vectors)
    me = ids[0]  # matches both filters
    for query, strategy, n in (({"half": True}, "post", 10), ({"rare": True}, "pre", 9)):  # 9 other rare ones
        result = FilteredSearch(random.Random(0)).search(index, collection, vectors[0], n, query, {id_key(me)})
        assert result.strategy == strategy and len(result.hits) == n and me not in {d for d, _ in result.hits}


def test_filter_on_id_pre_filters(corpus):
    """A filter naming `_id` itself goes to the database as it is."""
    collection, ids, vectors, _ = corpus
    index = build("flat", ids, vectors)
    result = FilteredSearch().search(index, collection, vectors[0], 5, {"_id": {"$in": ids[10:13]}}, set())
    assert result.strategy == "pre" and {d for d, _ in result.hits} == set(ids[10:13])


def test_selectivity_is_estimated_once_per_filter(corpus, monkeypatch):
    """The sample query runs once per filter and index while its estimate is fresh."""
    collection, ids, vectors, _ = corpus
    index = build("flat", ids, vectors)
    now = [0.0]
    search = FilteredSearch(random.Random(0), clock=lambda: now[0])
    calls = []
    original = index.sample_ids
    monkeypatch.setattr(index, "sample_ids", lambda *a: calls.append(a) or original(*a))
    assert search.selectivity(index, collection, {"half": True}) == pytest.approx(0.5, abs=0.2)
    assert search.selectivity(index, collection, {"half": True}) == search.selectivity(index, collection,
                                                                                       {"half": True})
    assert len(calls) == 1
    now[0] += filtered_search.SELECTIVITY_TTL_S + 1
    search.selectivity(index, collection, {"half": True})
    assert len(calls) == 2


def test_a_filter_the_database_rejects_is_a_bad_filter(corpus):
    collection, ids, vectors, _ = corpus
    index = build("flat", ids, vectors)
    with pytest.raises(ApiError) as caught:
        FilteredSearch().search(index, collection, vectors[0], 5, {"i": {"$nosuchop": 1}}, set())
    assert caught.value.code == "bad_filter" and caught.value.hint


def test_post_filter_over_a_whole_small_index_returns_every_match(db):
    """When the over-fetch covers the whole index, the matches found are all there are: fewer than n, post."""
    vectors = np.random.default_rng(9).normal(size=(12, DIM)).astype(np.float32)
    ids = db.docs.insert_many([{"half": i % 2 == 0} for i in range(12)]).inserted_ids
    index = build("hnsw", ids, vectors)
    result = FilteredSearch(random.Random(0)).search(index, db.docs, vectors[1], 10, {"half": True}, set())
    assert result.strategy == "post" and {d for d, _ in result.hits} == set(ids[0::2])


def test_protocol_fast_path_writes_and_reads_what_bson_does():
    """The plain-JSON fast path gives the same wire values as bson's json_util, Extended JSON included."""
    import datetime
    import json

    from bson import Binary, Decimal128, Int64, ObjectId, json_util
    from bson.binary import BinaryVectorDtype

    from modelstream.api import protocol

    value = {"oid": ObjectId(), "when": datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc),
             "vector": Binary.from_vector([1.0, 2.5], BinaryVectorDtype.FLOAT32), "raw": b"abc",
             "money": Decimal128("1.5"), "big": Int64(2**60), "nested": [{"x": ObjectId()}, (1, 2)],
             "floats": [0.1, 1e-30, -2.0], "nan": float("nan"), "text": "é"}
    line = protocol.encode(value)
    expected = json_util.dumps(value, json_options=protocol.OPTIONS)
    assert json.loads(line) == json.loads(expected)
    decoded = protocol.decode(line)
    assert decoded["oid"] == value["oid"] and decoded["vector"] == value["vector"] and decoded["when"] == value["when"]
    assert protocol.decode(b'{"op": "search", "vector": [0.5, 1]}') == {"op": "search", "vector": [0.5, 1]}
    with pytest.raises(ApiError):
        protocol.decode(b'{"op": "search", "vector": [0.5, 1]')
