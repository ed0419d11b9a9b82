"""Running it as a service: reload on SIGHUP, one daemon per data directory, token off loopback, limits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from conftest import TESTS, wait_until, write_registry

BASE = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: {listen}}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text}}
{extra}
indexes:
  letters: {{models: [letters]}}
"""


def registry(tmp_path, mongo_server, db_name, extra: str = "", listen: str = "null"):
    return write_registry(tmp_path, BASE, uri=mongo_server.uri, db=db_name, extra=extra, listen=listen)


def run_serve(path, timeout_s: float = 60):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "modelstream", "serve", "-c", str(path)], capture_output=True,
                          text=True, env=env, timeout=timeout_s)


def test_sighup_with_bad_file_changes_nothing_then_good_file_applies(tmp_path, mongo_server, db_name, db,
                                                                     serve_factory):
    """A broken registry on SIGHUP is refused; a valid one adds its new model, which backfills."""
    path = registry(tmp_path, mongo_server, db_name)
    serve = serve_factory(path)
    doc_id = db.docs.insert_one({"text": "abc"}).inserted_id
    wait_until(lambda: (db.docs.find_one({"_id": doc_id}) or {}).get("_outputs"))
    path.write_text(path.read_text() + "\n  broken: [unclosed\n")
    serve.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload rejected" in serve.log.read_text(), message="rejection logged")
    with serve.client() as c:
        assert [m["name"] for m in c.models()] == ["letters"]
    registry(tmp_path, mongo_server, db_name,
             extra='  length: {object: "toymodels:length", collection: docs, key: text}')
    serve.process.send_signal(signal.SIGHUP)
    wait_until(lambda: db.docs.find_one({"_id": doc_id}).get("_outputs", {}).get("text", {}).get("length") == 3,
               message="new model backfilled")
    with serve.client() as c:
        assert sorted(m["name"] for m in c.models()) == ["length", "letters"]
        assert c.status()["indexes"]["letters"]["size"] == 1


def test_second_daemon_on_same_data_dir_refuses(tmp_path, mongo_server, db_name, serve_factory):
    """The lock file keeps a second daemon off the same data directory."""
    path = registry(tmp_path, mongo_server, db_name)
    serve_factory(path)
    second = run_serve(path)
    assert second.returncode == 3 and "another modelstream daemon" in second.stderr


def test_token_required_off_loopback(tmp_path, mongo_server, db_name):
    """Listening on a non-loopback address without api.token refuses to start, saying why."""
    result = run_serve(registry(tmp_path, mongo_server, db_name, listen='"0.0.0.0:0"'))
    assert result.returncode == 2 and "api.token" in result.stderr


def test_oversize_line_is_answered_and_daemon_keeps_serving(tmp_path, mongo_server, db_name, serve_factory):
    """A line over the limit gets `too_large`; other clients are unaffected."""
    serve = serve_factory(registry(tmp_path, mongo_server, db_name))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(serve.socket)
        s.sendall(b'{"op": "ping", "pad": "' + b"x" * (1 << 20) + b'"}\n')
        reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is False and reply["error"]["code"] == "too_large"
    with serve.client() as c:
        assert c.ping() is True


def test_unix_socket_mode_and_removal(tmp_path, mongo_server, db_name, serve_factory):
    """The Unix socket is created 0660 and removed on a clean exit."""
    serve = serve_factory(registry(tmp_path, mongo_server, db_name))
    assert oct(os.stat(serve.socket).st_mode & 0o777) == "0o660"
    assert serve.terminate() == 0
    assert not os.path.exists(serve.socket)


def test_metrics_parse_and_match_the_workload(tmp_path, mongo_server, db_name, db, serve_factory):
    """`metrics` (socket) and HTTP /metrics parse as Prometheus text; counters match what was done."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from modelstream.daemon.embedded import free_port

    port = free_port()
    path = registry(tmp_path, mongo_server, db_name)
    path.write_text(path.read_text().replace("api: {listen: null}",
                                             f'api: {{listen: null, metrics_listen: "127.0.0.1:{port}"}}'))
    serve = serve_factory(path)
    db.docs.insert_many([{"text": "abc"}, {"text": "POISON"}, {"text": "xyz"}])
    wait_until(lambda: serve.status()["models"].get("letters", {}).get("failed") == 1
               and serve.status()["indexes"]["letters"]["size"] == 2)
    with serve.client() as c:
        c.search("letters", like={"text": "abc"}, n=1)
        text = c.request("metrics")["metrics"]
    http_text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for body in (text, http_text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body) for s in family.samples}
        assert samples[("modelstream_documents_processed_total", (("model", "letters"),))] == 2
        assert samples[("modelstream_documents_failed_total", (("model", "letters"),))] == 1
        assert samples[("modelstream_index_vectors", (("index", "letters"),))] == 2
        assert samples[("modelstream_search_seconds_count", ())] == 1


def test_reload_recomputes_changed_model_and_downstream_while_search_answers(tmp_path, mongo_server, db_name, db,
                                                                            serve_factory):
    """Changing a model's args recomputes it and its downstream only; searches answer throughout."""
    body = """
database: {{uri: "{uri}", name: {db}}}
api: {{listen: null}}
models:
  letters: {{object: "toymodels:letters", collection: docs, key: text}}
  scaled:  {{object: "toymodels:Scale", args: {{factor: {factor}}}, collection: docs, key: text,
            features: {{text: letters}}}}
  again:   {{object: "toymodels:Scale", args: {{factor: 1.0}}, collection: docs, key: text,
            features: {{text: scaled}}}}
  length:  {{object: "toymodels:length", collection: docs, key: text}}
indexes:
  scaled: {{models: [scaled]}}
"""
    path = write_registry(tmp_path, body, uri=mongo_server.uri, db=db_name, factor=2.0)
    serve = serve_factory(path)
    db.docs.insert_many([{"text": f"text {i}"} for i in range(300)])
    wait_until(lambda: serve.status()["models"].get("again", {}).get("done") == 300
               and serve.status()["indexes"]["scaled"]["size"] == 300, timeout_s=60)
    before = serve.status()["models"]
    write_registry(tmp_path, body, uri=mongo_server.uri, db=db_name, factor=3.0)
    serve.process.send_signal(signal.SIGHUP)
    answered = 0
    with serve.client() as c:
        while serve.status()["models"].get("again", {}).get("done", 0) < before["again"]["done"] + 300:
            assert len(c.search("scaled", vector=[1.0] * 26, n=3)) == 3  # never empty during the recompute
            answered += 1
    after = serve.status()["models"]
    assert after["scaled"]["done"] == before["scaled"]["done"] + 300
    assert after["letters"]["done"] == before["letters"]["done"]  # upstream unchanged
    assert after["length"]["done"] == before["length"]["done"]  # unrelated
    from modelstream.content import vector_of
    from toymodels import letters

    wait_until(lambda: (vector_of(db.docs.find_one({"text": "text 7"})["_outputs"]["text"]["scaled"])
                        == 3 * letters("text 7")).all(), message="recomputed output written")
    assert answered > 0


def test_refresh_and_prune(tmp_path, mongo_server, db_name, db, serve_factory):
    """`refresh` recomputes a model for every document; `prune` removes outputs of removed models."""
    path = registry(tmp_path, mongo_server, db_name,
                    extra='  length: {object: "toymodels:length", collection: docs, key: text}')
    serve = serve_factory(path)
    db.docs.insert_many([{"text": "a"}, {"text": "bb"}])
    wait_until(lambda: serve.status()["models"].get("length", {}).get("done") == 2)
    result = run_cli("refresh", "length", "--socket", serve.socket)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: serve.status()["models"]["length"]["done"] == 4, message="refreshed")
    assert serve.status()["models"]["letters"]["done"] == 2
    assert serve.terminate() == 0
    registry(tmp_path, mongo_server, db_name)  # `length` removed
    result = run_cli("prune", "-c", str(path))
    assert result.returncode == 0 and "length: outputs removed from 2 documents" in result.stdout, result.stderr
    doc = db.docs.find_one({"text": "bb"})
    assert "length" not in doc["_outputs"]["text"] and "length" not in doc["_modelstream"]
    assert "letters" in doc["_outputs"]["text"]


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "modelstream", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _threads_and_fds(pid: int) -> tuple[int, int]:
    threads = int(next(line for line in open(f"/proc/{pid}/status") if line.startswith("Threads:")).split()[1])
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def test_flood_of_clients_and_bad_lines_leaks_nothing(tmp_path, mongo_server, db_name, serve_factory):
    """200 clients sending thousands of bad lines: each gets answers, good clients keep being served, and
    the daemon's threads and file descriptors return to where they were."""
    import concurrent.futures

    serve = serve_factory(registry(tmp_path, mongo_server, db_name))
    with serve.client() as c:
        c.ping()
    before = _threads_and_fds(serve.process.pid)

    def flood(k: int) -> int:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(serve.socket)
            f = s.makefile("rwb")
            f.write(b"garbage\n" * 20 + b'{"op": "nope"}\n' + b'{"id": %d, "op": "ping"}\n' % k)
            f.flush()
            replies = [json.loads(f.readline()) for _ in range(22)]
        assert all(r["ok"] is False for r in replies[:21]) and replies[21] == {"id": k, "ok": True, "pong": True}
        return len(replies)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answered = sum(pool.map(flood, range(200)))
    assert answered == 200 * 22
    with serve.client() as c:
        assert c.ping() is True
    wait_until(lambda: _threads_and_fds(serve.process.pid)[0] <= before[0] + 2
               and _threads_and_fds(serve.process.pid)[1] <= before[1] + 2, timeout_s=30,
               message=f"threads and fds back to {before}")
