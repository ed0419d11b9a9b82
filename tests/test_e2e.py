"""End to end: `modelstream serve` as a subprocess, a real database, plain pymongo writes, the real socket."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from bson import Binary, ObjectId
from bson.binary import BinaryVectorDtype

from conftest import wait_until, write_registry
from modelstream.content import vector_of
from toymodels import letters

REGISTRY = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
outputs: {{store: {store}}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text, batch_size: 16}}
  doubled: {{object: "toymodels:Scale", args: {{factor: 2.0}}, collection: docs, key: text,
            features: {{text: letters}}}}
  length:  {{object: "toymodels:length", collection: docs, key: title, filter: {{kind: "book"}}}}
indexes:
  letters: {{models: [letters], measure: cosine}}
"""

STORES = ["inline", "collection"]


@pytest.fixture(params=STORES)
def store(request):
    return request.param


@pytest.fixture
def serve(tmp_path, mongo_server, db_name, serve_factory, store):
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store=store)
    return serve_factory(registry)


def outputs_of(db, store, doc_id):
    """The `_outputs` of a document, wherever the store keeps them."""
    holder = db.docs.find_one({"_id": doc_id}) if store == "inline" else db["_outputs.docs"].find_one({"_id": doc_id})
    return (holder or {}).get("_outputs", {})


def output(db, store, doc_id, path):
    value = outputs_of(db, store, doc_id)
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def test_insert_computes_outputs_and_chains(serve, db, store):
    """An insert gets its output, its chained output, and nothing for a filtered-out model."""
    doc_id = db.docs.insert_one({"text": "hello", "title": "abc", "kind": "film"}).inserted_id
    wait_until(lambda: output(db, store, doc_id, "text.doubled") is not None, message="chained output")
    assert np.allclose(vector_of(output(db, store, doc_id, "text.letters")), letters("hello"))
    assert np.allclose(vector_of(output(db, store, doc_id, "text.doubled")), 2 * letters("hello"))
    assert output(db, store, doc_id, "title.length") is None  # filter: kind must be "book"


def test_collection_store_never_writes_the_source(serve, db, store):
    """In collection mode the user's document stays exactly as written; inline adds only reserved fields."""
    doc_id = db.docs.insert_one({"text": "plain", "title": "x"}).inserted_id
    wait_until(lambda: output(db, store, doc_id, "text.doubled") is not None)
    doc = db.docs.find_one({"_id": doc_id})
    if store == "collection":
        assert doc == {"_id": doc_id, "text": "plain", "title": "x"}
    else:
        assert set(doc) == {"_id", "text", "title", "_outputs", "_modelstream"}


def test_update_recomputes_only_what_changed(serve, db, store):
    """Changing `text` recomputes letters and doubled; changing an unrelated field recomputes nothing."""
    doc_id = db.docs.insert_one({"text": "abc", "title": "t", "kind": "book"}).inserted_id
    wait_until(lambda: output(db, store, doc_id, "title.length") == 1)
    db.docs.update_one({"_id": doc_id}, {"$set": {"text": "zzz"}})
    wait_until(lambda: np.allclose(vector_of(output(db, store, doc_id, "text.doubled")), 2 * letters("zzz")),
               message="recomputed chain")
    before = serve.status()["models"]
    db.docs.update_one({"_id": doc_id}, {"$set": {"year": 2020}})
    marker = db.docs.insert_one({"text": "marker"}).inserted_id  # processed after the year update
    wait_until(lambda: output(db, store, marker, "text.letters") is not None)
    after = serve.status()["models"]
    assert after["letters"]["done"] == before["letters"]["done"] + 1  # the marker only
    assert after["length"]["done"] == before["length"]["done"]


def test_filter_change_removes_output(serve, db, store):
    """A document that stops matching a model's filter loses that model's output."""
    doc_id = db.docs.insert_one({"text": "a", "title": "four", "kind": "book"}).inserted_id
    wait_until(lambda: output(db, store, doc_id, "title.length") == 4)
    db.docs.update_one({"_id": doc_id}, {"$set": {"kind": "film"}})
    wait_until(lambda: output(db, store, doc_id, "title.length") is None, message="output removed")


def test_search_by_field_id_and_vector(serve, db, store):
    """Search answers over the socket by a query field, by a stored _id, and by a raw vector."""
    ids = db.docs.insert_many([{"text": t} for t in ["aaaa", "bbbb", "cccc", "aaab"]]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 4)
    with serve.client() as c:
        by_field = c.search("letters", like={"text": "aaaa"}, n=2)
        by_id = c.search("letters", like={"_id": ids[1]}, n=1)
        by_vector = c.search("letters", vector=letters("cccc").tolist(), n=1)
        by_binary = c.search("letters", vector=Binary.from_vector(letters("cccc").tolist(), BinaryVectorDtype.FLOAT32),
                             n=1)  # the compact form: a BSON float32 vector as Extended JSON $binary
    assert [r["_id"] for r in by_field] == [ids[0], ids[3]]
    assert by_field[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert by_id[0]["_id"] != ids[1]  # the query document itself is left out
    assert by_vector[0]["_id"] == ids[2] and by_binary == by_vector


def test_search_filter_and_project(serve, db, store):
    """`filter` restricts results with a MongoDB query; `project` returns document fields."""
    ids = db.docs.insert_many([{"text": "aaaa", "year": 2000}, {"text": "aaab", "year": 2020}]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 2)
    with serve.client() as c:
        results = c.search("letters", like={"text": "aaaa"}, n=5, filter={"year": {"$gte": 2010}},
                           project=["year"])
    assert [r["_id"] for r in results] == [ids[1]]
    assert results[0]["document"] == {"year": 2020}


def test_filtered_search_picks_post_or_pre_and_returns_n(serve, db, store):
    """A broad filter post-filters, a narrow one pre-filters; each returns n matching documents when n exist."""
    rng = np.random.default_rng(11)
    texts = ["".join(rng.choice(list("abcdefgh"), 6)) for _ in range(200)]
    docs = [{"text": t, "year": 2000 + i % 20, "tag": "rare" if i in (7, 150) else "common"}
            for i, t in enumerate(texts)]
    db.docs.insert_many(docs)
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 200, message="200 documents indexed")
    year_of = {d["_id"]: d["year"] for d in db.docs.find({}, {"year": 1})}
    with serve.client() as c:
        broad = c.request("search", index="letters", like={"text": "abcabc"}, n=10, filter={"year": {"$gte": 2010}})
        narrow = c.request("search", index="letters", like={"text": "abcabc"}, n=10, filter={"tag": "rare"})
    assert broad["filter_strategy"] == "post" and len(broad["results"]) == 10
    assert all(year_of[r["_id"]] >= 2010 for r in broad["results"])
    scores = [r["score"] for r in broad["results"]]
    assert scores == sorted(scores, reverse=True)
    assert narrow["filter_strategy"] == "pre"
    assert {r["_id"] for r in narrow["results"]} == {docs[7]["_id"], docs[150]["_id"]}  # fewer than n: all


def test_delete_leaves_index_and_outputs(serve, db, store):
    """A deleted document leaves the search results (and, in collection mode, the side collection)."""
    keep, gone = db.docs.insert_many([{"text": "keep"}, {"text": "gone"}]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 2)
    db.docs.delete_one({"_id": gone})
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 1, message="vector removed")
    with serve.client() as c:
        assert [r["_id"] for r in c.search("letters", like={"text": "gone"}, n=5)] == [keep]
    if store == "collection":
        assert db["_outputs.docs"].find_one({"_id": gone}) is None


def test_poison_document_does_not_stop_the_stream(serve, db, store):
    """A document the model cannot process is recorded with its reason; the others go on."""
    ids = db.docs.insert_many([{"text": "fine"}, {"text": "POISON pill"}, {"text": "also fine"}]).inserted_ids
    wait_until(lambda: output(db, store, ids[2], "text.letters") is not None)
    assert output(db, store, ids[0], "text.letters") is not None
    error = wait_until(lambda: db["_modelstream.errors"].find_one({"_id.doc": ids[1]}), message="error entry")
    assert error["_id"]["model"] == "letters" and "poisoned input" in error["error"]
    assert output(db, store, ids[1], "text.letters") is None
    later = db.docs.insert_one({"text": "after"}).inserted_id
    wait_until(lambda: output(db, store, later, "text.letters") is not None, message="stream goes on")


def test_malformed_and_unknown_requests(serve, db, store):
    """Bad lines get `ok: false` with a code; the connection stays usable."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(serve.socket)
        f = s.makefile("rwb")
        for line, code in [(b"not json\n", "bad_json"), (b'{"id": 7, "op": "serch"}\n', "bad_request"),
                           (b"[1, 2]\n", "bad_request"),
                           (b'{"id": 8, "op": "search", "index": "nope", "vector": [1]}\n', "not_found"),
                           (b'{"id": 9, "op": "search", "index": "letters", "n": -1, "vector": [1]}\n',
                            "bad_request")]:
            f.write(line)
            f.flush()
            response = __import__("json").loads(f.readline())
            assert response["ok"] is False and response["error"]["code"] == code, (line, response)
        f.write(b'{"id": 10, "op": "ping"}\n')
        f.flush()
        assert __import__("json").loads(f.readline()) == {"id": 10, "ok": True, "pong": True}


def test_apply_and_models(serve, db, store):
    """`apply` runs a model on a document given over the socket; `models` lists versions."""
    with serve.client() as c:
        output_value = c.apply("letters", {"text": "ab"})
        listed = {m["name"]: m for m in c.models()}
    assert output_value[:3] == [1.0, 1.0, 0.0]
    assert set(listed) == {"letters", "doubled", "length"} and all(m["version"] for m in listed.values())


def test_kill_restart_processes_writes_made_while_down(tmp_path, mongo_server, db_name, serve_factory, db, store):
    """kill -9, then inserts, updates and deletes while down: a restart processes all of them."""
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store=store)
    serve = serve_factory(registry)
    a, b, c = db.docs.insert_many([{"text": "one"}, {"text": "two"}, {"text": "three"}]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 3)
    serve.kill()
    d = db.docs.insert_one({"text": "four"}).inserted_id
    db.docs.update_one({"_id": a}, {"$set": {"text": "uno"}})
    db.docs.delete_one({"_id": b})
    serve = serve_factory(registry)
    wait_until(lambda: output(db, store, d, "text.doubled") is not None, message="doc written while down")
    wait_until(lambda: np.allclose(vector_of(output(db, store, a, "text.letters")), letters("uno")))
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 3)
    with serve.client() as client:
        found = {r["_id"] for r in client.search("letters", vector=letters("two").tolist(), n=10)}
    assert found == {a, c, d}
    if store == "collection":
        wait_until(lambda: db["_outputs.docs"].find_one({"_id": b}) is None, message="orphan side doc removed")


def test_sigterm_exits_zero(serve, db, store):
    """SIGTERM: finish the batch in hand, checkpoint, exit 0; the resume point is saved."""
    db.docs.insert_one({"text": "last"})
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 1)
    assert serve.terminate() == 0
    assert db["_modelstream.checkpoints"].find_one({"_id": "changes"})["token"]


def test_unknown_object_id_search_is_not_found(serve, db, store):
    """Searching like an _id that has no vector answers not_found, not a crash."""
    from modelstream.errors import ApiError

    with serve.client() as c, pytest.raises(ApiError) as info:
        c.search("letters", like={"_id": ObjectId()}, n=1)
    assert info.value.code == "not_found"


def test_restart_loads_snapshot_and_catches_up(tmp_path, mongo_server, db_name, serve_factory, db, store):
    """SIGTERM writes an index snapshot; a restart loads it and applies writes made while down."""
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store=store)
    serve = serve_factory(registry)
    ids = db.docs.insert_many([{"text": t} for t in ("red", "green", "blue")]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 3)
    assert serve.terminate() == 0
    snapshot = tmp_path / ".modelstream" / "indexes" / "letters.snapshot"
    assert snapshot.exists()
    db.docs.delete_one({"_id": ids[0]})
    db.docs.update_one({"_id": ids[1]}, {"$set": {"text": "yellow"}})
    serve = serve_factory(registry)
    assert "index snapshot loaded" in serve.log.read_text()
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 2, message="deleted vector gone")
    with serve.client() as c:
        wait_until(lambda: c.search("letters", vector=letters("yellow").tolist(), n=1)[0]["_id"] == ids[1]
                   and c.search("letters", vector=letters("yellow").tolist(), n=1)[0]["score"] > 0.999,
                   message="updated vector replaced")


def test_poison_is_not_retried_on_every_restart(tmp_path, mongo_server, db_name, serve_factory, db, store):
    """A failed input is remembered: a restart's scan skips it; changing the document tries it again."""
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store=store)
    serve = serve_factory(registry)
    bad = db.docs.insert_one({"text": "POISON"}).inserted_id
    entry = wait_until(lambda: db["_modelstream.errors"].find_one({"_id.doc": bad, "_id.model": "letters"}))
    assert serve.terminate() == 0
    serve = serve_factory(registry)
    wait_until(lambda: serve.status()["phase"] == "streaming")
    assert serve.status()["models"].get("letters", {}).get("failed", 0) == 0
    assert db["_modelstream.errors"].find_one({"_id": entry["_id"]})["attempts"] == entry["attempts"]
    db.docs.update_one({"_id": bad}, {"$set": {"text": "cured"}})
    wait_until(lambda: output(db, store, bad, "text.letters") is not None, message="changed input processed")
    wait_until(lambda: db["_modelstream.errors"].find_one({"_id": entry["_id"]}) is None, message="entry cleared")


def test_large_documents_are_read_by_id(tmp_path, mongo_server, db_name, serve_factory, db, store):
    """A document too large to ride in its change event is read separately and processed like any other."""
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store=store)
    serve_factory(registry)
    big = db.docs.insert_one({"text": "big one", "blob": "x" * (9 << 20)}).inserted_id
    wait_until(lambda: output(db, store, big, "text.letters") is not None, message="large insert processed")
    db.docs.update_one({"_id": big}, {"$set": {"text": "still big"}})
    wait_until(lambda: np.allclose(vector_of(output(db, store, big, "text.letters")), letters("still big")),
               message="large update processed")


FAN_IN = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
outputs: {{store: {store}}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text}}
  doubled: {{object: "toymodels:Scale", args: [2.0], collection: docs, key: text, features: {{text: letters}}}}
  length:  {{object: "toymodels:length", collection: docs, key: title}}
  total:   {{object: "toymodels:total", collection: docs, key: _base, features: {{text: doubled, title: length}}}}
"""


def test_three_level_chain_with_fan_in(tmp_path, mongo_server, db_name, serve_factory, db, store):
    """total reads two upstream outputs (one itself chained): computed in order, and again on an update."""
    serve_factory(write_registry(tmp_path, FAN_IN, uri=mongo_server.uri, db=db_name, store=store))
    doc_id = db.docs.insert_one({"text": "abc", "title": "four"}).inserted_id
    wait_until(lambda: output(db, store, doc_id, "_base.total") == 2 * 3 + 4, message="fan-in output")
    db.docs.update_one({"_id": doc_id}, {"$set": {"title": "x"}})
    wait_until(lambda: output(db, store, doc_id, "_base.total") == 2 * 3 + 1, message="recomputed on update")


def test_concurrent_searches_during_a_stream_see_only_real_documents(serve, db, store):
    """Searches running while vectors are added and removed never fail and never return a removed document
    once its removal is applied; at the end the index holds exactly the live documents."""
    import threading

    ids = db.docs.insert_many([{"text": f"seed {i}"} for i in range(200)]).inserted_ids
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 200)
    ever = set(ids)
    errors: list = []
    done = threading.Event()

    def searcher():
        with serve.client() as c:
            while not done.is_set():
                try:
                    results = c.search("letters", vector=[1.0] * 26, n=50)
                    found = [r["_id"] for r in results]
                    if len(found) != len(set(found)) or not set(found) <= ever:
                        errors.append(found)
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for round_ in range(5):
        new = [ObjectId() for _ in range(100)]
        ever.update(new)  # before the insert: a searcher may see them at once
        db.docs.insert_many([{"_id": doc_id, "text": f"round {round_} doc {i}"} for i, doc_id in enumerate(new)])
        db.docs.delete_many({"_id": {"$in": new[:50]}})
    live = {d["_id"] for d in db.docs.find({}, {"_id": 1})}
    with serve.client() as c:  # the size alone can match mid-way (inserts not yet added = deletes not yet applied)
        wait_until(lambda: {r["_id"] for r in c.search("letters", vector=[1.0] * 26, n=len(live) + 10)} == live,
                   message="the index holds exactly the live documents")
    done.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert serve.status()["indexes"]["letters"]["size"] == len(live)
