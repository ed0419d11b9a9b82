"""One-off commands against the database: verify, backfill, errors, retry."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import TESTS, Serve, wait_until, write_registry

REGISTRY = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text}}
  flaky:   {{object: "toymodels:flaky", collection: docs, key: text}}
"""


def cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run([sys.executable, "-m", "modelstream", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_verify_reports_missing_and_stale_then_backfill_fixes(tmp_path, mongo_server, db_name, db):
    """With no daemon: verify counts missing and stale outputs and exits 1; backfill fixes; verify exits 0."""
    path = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name)
    db.docs.insert_many([{"text": f"doc {i}"} for i in range(20)])
    assert cli("backfill", "-c", str(path)).returncode == 0
    db.docs.update_one({"text": "doc 3"}, {"$set": {"text": "changed"}})
    db.docs.insert_one({"text": "new"})
    result = cli("verify", "-c", str(path), "--json")
    assert result.returncode == 1, result.stderr
    import json

    report = json.loads(result.stdout)
    assert report["models"]["letters"]["missing"] == 1 and report["models"]["letters"]["stale"] == 1
    assert report["models"]["letters"]["ok"] == 19
    assert cli("backfill", "-c", str(path)).returncode == 0
    final = cli("verify", "-c", str(path))
    assert final.returncode == 0 and "all outputs up to date" in final.stdout


def test_errors_and_retry_through_a_running_daemon(tmp_path, mongo_server, db_name, db, monkeypatch):
    """A transient model failure is listed by `errors`; after the outage `retry` processes the document."""
    marker = tmp_path / "outage"
    marker.write_text("down")
    monkeypatch.setenv("FLAKY_MARKER_FILE", str(marker))
    path = write_registry(tmp_path, REGISTRY, uri=mongo_server.uri, db=db_name)
    serve = Serve(path).start()
    try:
        doc_id = db.docs.insert_one({"text": "hello"}).inserted_id
        wait_until(lambda: db["_modelstream.errors"].find_one({"_id.doc": doc_id}), message="error recorded")
        listed = cli("errors", "-c", str(path))
        assert "flaky" in listed.stdout and "backend unavailable" in listed.stdout
        marker.unlink()
        result = cli("retry", "-c", str(path), "--model", "flaky", "--socket", serve.socket)
        assert result.returncode == 0 and "retried 1 documents: 0 failed again" in result.stdout, result.stderr
        assert db.docs.find_one({"_id": doc_id})["_outputs"]["text"]["flaky"] == 5
        assert db["_modelstream.errors"].count_documents({}) == 0
    finally:
        serve.terminate()


def test_verify_compares_a_running_daemons_index(tmp_path, mongo_server, db_name, db):
    """With a daemon running, verify also checks each index's size against the up-to-date documents."""
    import json

    path = write_registry(tmp_path, REGISTRY + 'indexes:\n  letters: {{models: [letters]}}\n',
                          uri=mongo_server.uri, db=db_name)
    serve = Serve(path).start()
    try:
        db.docs.insert_many([{"text": "one"}, {"text": "two"}, {"text": "three"}])
        wait_until(lambda: serve.status()["indexes"]["letters"]["size"] == 3
                   and serve.status()["models"].get("flaky", {}).get("done") == 3)
        result = cli("verify", "-c", str(path), "--json")
        report = json.loads(result.stdout)
        assert result.returncode == 0, result.stdout
        assert report["indexes"] == {"letters": {"size": 3, "expected": 3}}
    finally:
        serve.terminate()
