"""The two stores against a real server: strict validators, and moving outputs between the stores."""

from __future__ import annotations

import subprocess
import sys
import time

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
import numpy as np
import pytest

from conftest import TESTS, wait_until, write_registry
from modelstream.content import vector_of
from modelstream.daemon.migrate import MIGRATIONS, migrate_collection
from toymodels import letters

REGISTRY = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
outputs: {{store: {store}}}
models:
  letters: {{object: "toymodels:letters", collection: people, key: name, batch_size: 16}}
  doubled: {{object: "toymodels:Scale", args: {{factor: 2.0}}, collection: people, key: name,
            features: {{name: letters}}}}
  other:   {{object: "toymodels:letters", collection: notes, key: text}}
indexes:
  letters: {{models: [letters], measure: cosine}}
"""

STRICT = {"$jsonSchema": {"bsonType": "object", "additionalProperties": False,
                          "properties": {"_id": {"bsonType": "objectId"}, "name": {"bsonType": "string"}}}}
NAMES = ["anna", "bob", "carla", "dave", "eve", "frank", "gina"]


def raw_documents(collection) -> dict:
    """Every document as the server stores it: raw BSON bytes by _id."""
    found = {}
    for batch in collection.find_raw_batches(sort=[("_id", 1)]):
        for raw in bson.decode_all(batch, CodecOptions(document_class=RawBSONDocument)):
            found[raw["_id"]] = bytes(raw.raw)
    return found


def strict_people(db):
    db.create_collection("people", validator=STRICT)
    return db.people.insert_many([{"name": n} for n in NAMES]).inserted_ids


def test_strict_validator_collection_store_leaves_documents_untouched(tmp_path, mongo_server, db_name, db,
                                                                      serve_factory):
    """additionalProperties: false + collection store: every document stays byte for byte; search works."""
    ids = strict_people(db)
    before = raw_documents(db.people)
    serve = serve_factory(write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store="collection"))
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == len(NAMES), message="index filled")
    late = db.people.insert_one({"name": "zoe"}).inserted_id  # the stream, not only the scan
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == len(NAMES) + 1, message="late doc indexed")
    wait_until(lambda: db["_outputs.people"].count_documents({"_outputs.name.doubled": {"$exists": True}})
               == len(NAMES) + 1, message="chained outputs in the side collection")
    after = raw_documents(db.people)
    assert {k: v for k, v in after.items() if k != late} == before
    assert bson.decode(after[late]) == {"_id": late, "name": "zoe"}
    with serve.client() as c:
        found = c.search("letters", like={"name": "anna"}, n=1)
    assert found[0]["_id"] == ids[0]
    assert db["_modelstream.errors"].count_documents({}) == 0


def test_strict_validator_inline_store_records_each_rejection(tmp_path, mongo_server, db_name, db, serve_factory):
    """Inline into a strict collection: one clear error per document (code 121, hint), nothing retried forever,
    and the stream goes on for other collections."""
    ids = strict_people(db)
    before = raw_documents(db.people)
    serve = serve_factory(write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store="inline"))
    errors = db["_modelstream.errors"]
    wait_until(lambda: errors.count_documents({"_id.collection": "people"}) == 2 * len(NAMES),
               message="an error per document and model")
    for doc_id in ids:
        entries = list(errors.find({"_id.doc": doc_id}))
        assert sorted(e["_id"]["model"] for e in entries) == ["doubled", "letters"], doc_id
        for entry in entries:
            assert "code 121" in entry["error"] and "validation" in entry["error"]
            assert "outputs: {collections: {people: collection}}" in entry["hint"]
    note = db.notes.insert_one({"text": "still streaming"}).inserted_id
    wait_until(lambda: (db.notes.find_one({"_id": note}) or {}).get("_outputs") is not None,
               message="another collection still processed")
    attempts = {e["_id"]["doc"]: e["attempts"] for e in errors.find({"_id.collection": "people"})}
    time.sleep(1.5)  # a retry loop would show as growing attempts
    assert {e["_id"]["doc"]: e["attempts"] for e in errors.find({"_id.collection": "people"})} == attempts
    assert raw_documents(db.people) == before
    status = serve.status()
    assert status["phase"] == "streaming" and status["indexes"]["letters"]["size"] == 0
    with serve.client() as c:
        assert c.ping()


def test_stream_goes_on_after_drop_database(tmp_path, mongo_server, db_name, db, mongo, serve_factory):
    """dropDatabase invalidates the change stream (MongoEngine's test suite does it per class): the daemon
    reopens after it and processes what comes next."""
    serve = serve_factory(write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store="collection"))
    first = db.people.insert_one({"name": "first"}).inserted_id
    wait_until(lambda: db["_outputs.people"].find_one({"_id": first}), message="first doc processed")
    mongo.drop_database(db_name)
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 0, message="dropped vectors forgotten")
    later = db.people.insert_one({"name": "later"}).inserted_id
    wait_until(lambda: db["_outputs.people"].find_one({"_id": later}), message="doc after dropDatabase processed")
    assert serve.status()["indexes"]["letters"]["size"] == 1


def migrate(registry, to, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelstream", "migrate-outputs", "-c", str(registry), "--to", to,
                           "--no-progress", *extra], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(TESTS), **__import__("os").environ}, cwd=registry.parent)


def done(serve, model) -> int:
    return serve.status()["models"].get(model, {}).get("done", 0)


def all_outputs(db, store) -> dict:
    holder = db.people if store == "inline" else db["_outputs.people"]
    return {d["_id"]: {k: d.get(k) for k in ("_outputs", "_modelstream")}
            for d in holder.find({}, {"_outputs": 1, "_modelstream": 1})}


def test_migrate_inline_collection_inline_keeps_outputs_and_search(tmp_path, mongo_server, db_name, db,
                                                                   serve_factory):
    """inline -> collection -> inline: outputs equal at every step, nothing recomputed, search answers."""
    ids = db.people.insert_many([{"name": n, "age": i} for i, n in enumerate(NAMES)]).inserted_ids
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store="inline")
    serve = serve_factory(registry)
    wait_until(lambda: db.people.count_documents({"_outputs.name.doubled": {"$exists": True}}) == len(NAMES))
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == len(NAMES))
    inline = all_outputs(db, "inline")

    refused = migrate(registry, "collection")  # the daemon holds the lock
    assert refused.returncode == 3 and "stop it first" in refused.stderr
    assert serve.terminate() == 0

    moved = migrate(registry, "collection")
    assert moved.returncode == 0, moved.stderr
    assert f"people: {len(NAMES)} documents' outputs moved to collection" in moved.stdout
    assert "now set the store" in moved.stdout
    assert all_outputs(db, "collection") == inline
    assert all(set(d) == {"_id", "name", "age"} for d in db.people.find())

    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store="collection")
    serve = serve_factory(registry)
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == len(NAMES))
    assert done(serve, "letters") == 0 and done(serve, "doubled") == 0  # nothing recomputed
    with serve.client() as c:
        assert c.search("letters", like={"name": "carla"}, n=1)[0]["_id"] == ids[2]
    assert serve.terminate() == 0

    back = migrate(registry, "inline")
    assert back.returncode == 0, back.stderr
    assert all_outputs(db, "inline") == inline
    assert db["_outputs.people"].count_documents({}) == 0
    registry = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name, store="inline")
    serve = serve_factory(registry)
    wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == len(NAMES))
    assert done(serve, "letters") == 0 and done(serve, "doubled") == 0
    with serve.client() as c:
        assert c.search("letters", vector=letters("gina").tolist(), n=1)[0]["_id"] == ids[-1]
    new = db.people.insert_one({"name": "hal"}).inserted_id  # and the daemon goes on inline
    wait_until(lambda: (db.people.find_one({"_id": new}) or {}).get("_outputs") is not None)
    assert np.allclose(vector_of(db.people.find_one({"_id": new})["_outputs"]["name"]["letters"]), letters("hal"))


class Crash(Exception):
    pass


@pytest.mark.parametrize("to", ["collection", "inline"])
def test_migrate_resumes_after_a_crash(db, to):
    """A crash after some pages: the rerun continues from the recorded _id and the result is the same."""
    frm = "inline" if to == "collection" else "collection"
    holder = db.people if frm == "inline" else db["_outputs.people"]
    ids = db.people.insert_many([{"name": f"p{i}"} for i in range(23)]).inserted_ids
    # mixed _id types too: $gt compares within one type only
    ids += db.people.insert_many([{"_id": 7, "name": "int"}, {"_id": "s", "name": "str"}]).inserted_ids
    holder.bulk_write([__import__("pymongo").UpdateOne(
        {"_id": i}, {"$set": {"_outputs.name.m": [float(n)], "_modelstream.m": f"fp{n}"}}, upsert=True)
        for n, i in enumerate(ids)])
    expected = all_outputs(db, frm)
    pages = []

    def crash_after_three(n):
        pages.append(n)
        if len(pages) == 3:
            raise Crash

    with pytest.raises(Crash):
        migrate_collection(db, "people", to, page=5, progress=crash_after_three)
    assert pages == [1, 1, 5]  # _id order is numbers, strings, ObjectIds; a page keeps to one type
    record = db[MIGRATIONS].find_one({"_id": "people"})
    assert record["to"] == to and record["finished_at"] is None and record["last_id"] == sorted(ids[:23])[4]
    done = migrate_collection(db, "people", to, page=5)
    assert done.resumed_from == record["last_id"]
    assert done.moved == len(ids) - 7
    assert all_outputs(db, to) == expected
    assert holder.count_documents({"_outputs": {"$exists": True}}) == 0
    assert db[MIGRATIONS].find_one({"_id": "people"})["finished_at"] is not None
    again = migrate_collection(db, "people", to, page=5)  # idempotent: nothing left to move
    assert again.moved == 0 and all_outputs(db, to) == expected


def test_outputs_database_keeps_every_daemon_write_out_of_the_watched_database(tmp_path, mongo_server, db_name, db,
                                                                            mongo, serve_factory):
    """With `outputs.database`, side outputs, checkpoints and errors live there: the app's database sees none."""
    from conftest import wait_until, write_registry

    own = db_name + "_own"
    path = write_registry(tmp_path, """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
outputs: {{store: collection, database: {own}}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text}}
indexes:
  letters: {{models: [letters]}}
""", uri=mongo_server.uri, db=db_name, own=own)
    serve = serve_factory(path)
    try:
        db.docs.insert_many([{"text": "abc"}, {"text": "POISON"}])
        wait_until(lambda: mongo[own]["_modelstream.errors"].count_documents({}) == 1
                   and serve.status()["indexes"]["letters"]["size"] == 1)
        wait_until(lambda: mongo[own]["_modelstream.checkpoints"].find_one({"_id": "changes"}))
        assert mongo[own]["_outputs.docs"].count_documents({}) == 1
        assert db.list_collection_names() == ["docs"]
    finally:
        mongo.drop_database(own)
