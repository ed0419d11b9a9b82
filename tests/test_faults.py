"""Never lose a document: kill -9 the daemon, kill the database, poison, lost resume tokens, dropped collections.

Each test drives `modelstream serve` (a real subprocess) against a real SecantusDB process, with
writers in separate processes (their own pymongo clients), and ends by comparing the daemon's
outputs and index with the database itself (tests/fault_harness.py: `check_state`). The long
version, with 20,000 writes and 20 kills, is bench/fault_long.py.
"""

from __future__ import annotations

import uuid

import numpy as np
import pymongo
import pytest
from bson import ObjectId

from conftest import wait_until
from fault_harness import COLL, INDEX, Daemon, DbServer, Run, check_state, is_clean, printable, wait_quiescent, \
    write_registry
from modelstream.daemon.embedded import free_port

pytestmark = pytest.mark.slow

STORES = ["inline", "collection"]


def db_name() -> str:
    return "f_" + uuid.uuid4().hex[:10]


def assert_clean(report: dict) -> None:
    print(printable(report))
    assert is_clean(report), printable(report)


@pytest.fixture
def cleanup():
    """Whatever a test starts (daemons, runs, database servers) is stopped, pass or fail."""
    things: list = []
    yield things.append
    for thing in reversed(things):
        if isinstance(thing, Run):
            thing.close()
        elif isinstance(thing, Daemon):
            thing.kill()
        elif isinstance(thing, DbServer):
            thing.stop()


@pytest.mark.parametrize("store", STORES)
def test_kill_9_the_daemon_during_5000_writes(tmp_path, mongo_server, store, cleanup):
    """>= 10 SIGKILLs during >= 5,000 inserts/updates/deletes from 3 writer processes: nothing lost, nothing stale."""
    run = Run(tmp_path, mongo_server.uri, db_name(), store=store, writers=3, ops=5000, pace_s=30, max_s=240,
              kills=10, up_s=(0.2, 1.2), seed=11 if store == "inline" else 12, vector_sample=300)
    cleanup(run)
    report = run.execute()
    assert report["kills"] >= 10 and report["ops_total"] >= 5000
    assert_clean(report)


def test_database_killed_and_restarted_mid_stream(tmp_path, cleanup):
    """The database dies (kill -9) twice and comes back on the same port and storage; the daemon rides it out."""
    server = DbServer(tmp_path / "db", free_port()).start()
    cleanup(server)
    run = Run(tmp_path / "run", server.uri, db_name(), store="inline", writers=3, ops=2000, pace_s=16, max_s=240,
              kills=0, db_server=server, db_kills=2, db_down_s=(2.0, 12.0), journal=True, seed=21)
    cleanup(run)
    report = run.execute()
    assert report["db_kills"] == 2
    assert report["daemon_starts"] == 1 and run.daemon.alive(), "the daemon must survive, not be restarted"
    assert report["retries"] >= 1, "a 12 s outage outlasts server selection: the daemon must have backed off"
    assert run.daemon.log_events("database unreachable; retrying")
    assert_clean(report)


def test_poison_documents_are_recorded_and_the_rest_processed(tmp_path, mongo_server, cleanup):
    """100 documents whose text holds POISON among 5,000 writes: 100 errors with reasons, everything else done."""
    name = db_name()
    run = Run(tmp_path, mongo_server.uri, name, store="collection", writers=3, ops=5000, pace_s=15, max_s=240,
              kills=2, up_s=(2.0, 4.0), poison=100, seed=31, vector_sample=200)
    cleanup(run)
    report = run.execute()
    assert len(report["poison_ids"]) == 100 and report["poisoned"] == 100
    assert_clean(report)
    errors = list(pymongo.MongoClient(mongo_server.uri)[name]["_modelstream.errors"].find({}))
    by_doc = {str(e["_id"]["doc"]): e for e in errors if e["_id"]["model"] == "letters"}
    assert set(by_doc) == set(report["poison_ids"]), "exactly the poisoned documents are recorded"
    assert all("poisoned input" in e["error"] for e in by_doc.values())
    assert {e["_id"]["model"] for e in errors} == {"letters"}  # `doubled` never ran on them: no input


def _writes(db, rng, n: int, live: list) -> None:
    """Plain writes while the daemon is down: inserts, updates of `text`, deletes."""
    for _ in range(n):
        r = rng.random()
        if r < 0.5 or len(live) < 10:
            live.append(db[COLL].insert_one({"text": " ".join(rng.choice(["sofa", "dog", "snow", "river", "kilo"])
                                                              for _ in range(3))}).inserted_id)
        elif r < 0.8:
            db[COLL].update_one({"_id": rng.choice(live)}, {"$set": {"text": rng.choice(["xray", "zulu", "mike"])}})
        else:
            db[COLL].delete_one({"_id": live.pop(rng.randrange(len(live)))})


@pytest.mark.parametrize("how", ["pruned", "rejected"])
def test_unusable_resume_token_is_detected_and_rescanned(tmp_path, how, cleanup):
    """The saved token fell off a small oplog, or the server refuses it: logged, rescanned, same end state."""
    import random

    server = DbServer(tmp_path / "db", extra=("--oplog-max-entries", "200")).start()
    cleanup(server)
    name = db_name()
    client = pymongo.MongoClient(server.uri)
    db = client[name]
    daemon = Daemon(write_registry(tmp_path / "run", server.uri, name, "collection")).start()
    cleanup(daemon)
    rng, live = random.Random(41), []
    _writes(db, rng, 300, live)
    wait_quiescent(db, "collection", daemon)
    assert daemon.terminate() == 0
    saved = db["_modelstream.checkpoints"].find_one({"_id": "changes"})["token"]
    if how == "pruned":
        _writes(db, rng, 1500, live)  # > 1000 oplog entries: the server prunes to 200, the token is gone
    else:
        with client["other_" + name].watch() as stream:  # a real token, but of another database's stream
            client["other_" + name].c.insert_one({"x": 1})
            stream.try_next()
            foreign = stream.resume_token
        db["_modelstream.checkpoints"].update_one({"_id": "changes"}, {"$set": {"token": foreign}})
        _writes(db, rng, 300, live)
    daemon = Daemon(daemon.registry).start()
    cleanup(daemon)
    wait_quiescent(db, "collection", daemon, timeout_s=60)
    assert daemon.log_events("change stream position lost: rescanning everything"), daemon.tail()
    wait_until(lambda: db["_modelstream.checkpoints"].find_one({"_id": "changes"}),
               message="a fresh checkpoint (saved after the first batch, or within a second when idle)")
    assert db["_modelstream.checkpoints"].find_one({"_id": "changes"})["token"] != saved
    assert_clean(check_state(db, "collection", daemon, vector_sample=None))
    client.close()


@pytest.mark.parametrize("store", STORES)
def test_collection_dropped_and_recreated_under_the_daemon(tmp_path, mongo_server, store, cleanup):
    """Drop the watched collection while the daemon runs: the index empties, old results are never served."""
    name = db_name()
    client = pymongo.MongoClient(mongo_server.uri)
    db = client[name]
    daemon = Daemon(write_registry(tmp_path, mongo_server.uri, name, store)).start()
    cleanup(daemon)
    old = db[COLL].insert_many([{"text": f"old {w}"} for w in ["sofa", "dog", "snow"] * 100]).inserted_ids
    wait_quiescent(db, store, daemon)
    db[COLL].drop()
    wait_until(lambda: daemon.status()["indexes"][INDEX]["size"] == 0, timeout_s=30, message="index emptied")
    with daemon.client() as c:
        assert c.search(INDEX, vector=np.ones(26).tolist(), n=50) == []
    if store == "collection":
        assert db["_outputs." + COLL].count_documents({}) == 0
    # recreated: new documents, then a second drop racing with more inserts in the same batches
    db[COLL].insert_many([{"text": f"new {w}"} for w in ["river", "stone", "light"] * 50])
    db[COLL].drop()
    new = db[COLL].insert_many([{"text": f"newer {w}"} for w in ["kilo", "lima", "mike"] * 40]).inserted_ids
    wait_quiescent(db, store, daemon)
    counts = check_state(db, store, daemon, vector_sample=None)
    assert_clean(counts)
    with daemon.client() as c:
        found = {r["_id"] for r in c.search(INDEX, vector=np.ones(26).tolist(), n=1000)}
    assert not found & set(old) and set(new) <= found and counts["documents"] == 121  # + the marker
    assert all(isinstance(i, ObjectId) for i in found)
    client.close()
