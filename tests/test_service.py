"""Running it as a service: reload on SIGHUP, one daemon per data directory, token off loopback, limits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

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


# -- status: every field true after a known workload ------------------------------------------------------


def _streaming(serve) -> None:
    """Writes from now on reach the daemon as change events (earlier ones only through its start-up scan)."""
    wait_until(lambda: serve.status()["phase"] == "streaming", timeout_s=60, message="streaming")


def _settled(serve, expected: dict[str, int], events: int):
    """The status once every event is applied and the stream has gone quiet (None until then)."""
    status = serve.status()
    models = status["models"]
    processed = all(models[name]["done"] + models[name]["failed"] == n for name, n in expected.items())
    return status if processed and status["events"] == events and status["lag"]["idle"] else None


def test_status_fields_are_true_after_a_known_workload(tmp_path, mongo_server, db_name, db, serve_factory):
    """20 inserts, one that `letters` cannot process: the socket `status`, `status --json` and the table
    report exactly that: counts, versions, index size and bytes, resume point, uptime, connection, the
    failing document as last error, and no lag once idle."""
    from modelstream import registry as registry_module

    path = registry(tmp_path, mongo_server, db_name,
                    extra='  length: {object: "toymodels:length", collection: docs, key: text}')
    versions = registry_module.load(path).versions
    serve = serve_factory(path)
    _streaming(serve)
    ids = db.docs.insert_many([{"text": f"text {i}"} for i in range(19)] + [{"text": "POISON pill"}]).inserted_ids
    poison = ids[-1]
    status = wait_until(lambda: _settled(serve, {"letters": 20, "length": 20}, 20), timeout_s=60,
                        message="20 events applied, stream idle")

    assert status["models"]["letters"] == {"done": 19, "failed": 1, "in_progress": 0, "active": True,
                                               "collection": "docs", "version": versions["letters"]}
    assert status["models"]["length"] == {"done": 20, "failed": 0, "in_progress": 0, "active": True,
                                          "collection": "docs", "version": versions["length"]}
    index = status["indexes"]["letters"]
    assert index["size"] == 19 and index["dim"] == 26 and index["bytes"] >= 19 * 26 * 4
    assert status["resume_point"] and "_data" in status["resume_point"]
    assert status["uptime_s"] > 0
    assert status["connection"] == "connected" and status["phase"] == "streaming"
    assert status["last_failure"]["_id"] == poison and status["last_failure"]["model"] == "letters"
    assert str(poison) in status["last_error"] and "poisoned input" in status["last_error"]
    assert status["last_error_at"] == status["last_failure"]["at"].timestamp() <= time.time()
    assert status["lag_events"] == 0 and status["lag"]["events"] == 0
    assert status["lag"]["in_hand"] == 0 and status["lag"]["buffered"] == 0
    assert status["queue_depth"] == 0 and status["queue"] == {"batches": 0, "events": 0}
    assert 0 <= status["lag"]["seconds_behind"] < 1

    result = run_cli("status", "--json", "--socket", serve.socket)
    assert result.returncode == 0, result.stderr
    cli = json.loads(result.stdout)
    assert {name: (m["done"], m["failed"], m["in_progress"], m["version"]) for name, m in cli["models"].items()} \
        == {"letters": (19, 1, 0, versions["letters"]), "length": (20, 0, 0, versions["length"])}
    assert cli["indexes"] == status["indexes"]
    assert cli["resume_point"] == status["resume_point"]  # idle: the checkpoint does not move
    assert cli["uptime_s"] >= status["uptime_s"] > 0
    assert cli["connection"] == "connected" and cli["events"] == 20
    assert cli["last_failure"]["_id"] == {"$oid": str(poison)} and str(poison) in cli["last_error"]
    assert cli["lag_events"] == 0 and cli["queue"] == {"batches": 0, "events": 0}
    assert cli["lag"]["seconds_behind"] < 1

    table = run_cli("status", "--socket", serve.socket)
    assert table.returncode == 0, table.stderr
    models, indexes = _table(table.stdout, "MODEL"), _table(table.stdout, "INDEX")
    assert models == {"letters": ["letters", versions["letters"][:12], "yes", "19", "1", "0"],
                      "length": ["length", versions["length"][:12], "yes", "20", "0", "0"]}
    assert indexes["letters"][:4] == ["letters", "19", "26", "cosine"]
    assert "lag 0 events" in table.stdout and "connection connected" in table.stdout
    assert f"last error: model letters could not process docs _id {poison}" in table.stdout


def _table(text: str, header: str) -> dict[str, list[str]]:
    """The rows under `header` in `modelstream status`'s output, up to the next blank line, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()
    return rows


def _holding(tmp_path, mongo_server, db_name, db, serve_factory, monkeypatch, prefix: str, count: int):
    """A daemon whose `hold` model blocks on the first batch of `count` new documents until `marker` goes:
    (serve, marker, documents in the model now)."""
    marker = tmp_path / "hold"
    marker.touch()
    monkeypatch.setenv("HOLD_MARKER_FILE", str(marker))
    serve = serve_factory(registry(tmp_path, mongo_server, db_name,
                                   extra='  hold: {object: "toymodels:hold", collection: docs, key: text}'))
    _streaming(serve)
    db.docs.insert_many([{"text": f"{prefix} {i}"} for i in range(count)])
    held = wait_until(lambda: serve.status()["models"].get("hold", {}).get("in_progress"), message="hold blocks")
    return serve, marker, held


def test_lag_counts_events_received_but_not_yet_applied(tmp_path, mongo_server, db_name, db, serve_factory,
                                                        monkeypatch):
    """While a model holds a batch, status and /metrics count every event received and not applied (in
    hand, read ahead) and the seconds behind grow; once it lets go, the lag drains to 0."""
    from prometheus_client.parser import text_string_to_metric_families

    serve, marker, held = _holding(tmp_path, mongo_server, db_name, db, serve_factory, monkeypatch, "first", 5)
    assert 1 <= held <= 5
    db.docs.insert_many([{"text": f"then {i}"} for i in range(3)])
    status = wait_until(lambda: (s := serve.status())["lag_events"] == 8 and s, message="lag of 8 events")
    assert 1 <= status["lag"]["in_hand"] <= 5
    assert status["lag"]["in_hand"] + status["queue"]["events"] + status["lag"]["buffered"] == 8
    wait_until(lambda: serve.status()["lag"]["seconds_behind"] >= 1, message="seconds behind grow while held")
    with serve.client() as c:
        metrics = {s.name: s.value for f in text_string_to_metric_families(c.request("metrics")["metrics"])
                   for s in f.samples}
    assert metrics["modelstream_lag_events"] == 8 and metrics["modelstream_lag_seconds"] >= 1

    marker.unlink()
    drained = wait_until(lambda: _settled(serve, {"hold": 8, "letters": 8}, 8), message="lag drained")
    assert drained["lag_events"] == 0 and drained["lag"]["seconds_behind"] < 1
    assert drained["models"]["hold"]["in_progress"] == 0


# -- api.request_timeout_s: slow lines and slow ops are answered, everyone else is served ----------------


def test_slow_request_line_times_out_while_others_are_served(tmp_path, mongo_server, db_name, serve_factory):
    """A client trickling a request without its newline (slowloris) gets `timeout` after
    api.request_timeout_s, although every byte restarts a per-read timeout; another client is served
    all along."""
    import select

    serve = serve_factory(registry(tmp_path, mongo_server, db_name, listen="null, request_timeout_s: 1"))
    reply = b""
    with socket.socket(socket.AF_UNIX) as slow, serve.client() as other:
        slow.connect(serve.socket)
        slow.sendall(b'{"id": 1, "op": "ping"')
        started = time.monotonic()
        while b"\n" not in reply:
            assert time.monotonic() - started < 30, "a trickling client was never cut off"
            slow.sendall(b" ")
            assert other.ping() is True
            if select.select([slow], [], [], 0.1)[0]:
                chunk = slow.recv(4096)
                assert chunk, "closed without an answer"
                reply += chunk
        answer = json.loads(reply.split(b"\n")[0])
        assert answer["ok"] is False and answer["error"]["code"] == "timeout"
        assert "request_timeout_s" in answer["error"]["message"]
        slow.settimeout(10)
        assert reply.split(b"\n", 1)[1] + slow.recv(4096) == b""  # then closed
        assert other.ping() is True


def test_slow_op_times_out_while_others_are_served(tmp_path, mongo_server, db_name, serve_factory, monkeypatch):
    """An `apply` still running after api.request_timeout_s answers `timeout` (with its id) and closes while
    the op is provably still running; other clients are served meanwhile; its thread ends when the op does."""
    marker = tmp_path / "hold"
    marker.touch()
    monkeypatch.setenv("HOLD_MARKER_FILE", str(marker))
    serve = serve_factory(registry(
        tmp_path, mongo_server, db_name, listen="null, request_timeout_s: 1",
        extra='  hold: {object: "toymodels:hold", collection: docs, key: text, active: false}'))
    with serve.client() as c:
        c.ping()
    before = _threads_and_fds(serve.process.pid)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(serve.socket)
        s.sendall(b'{"id": 7, "op": "apply", "model": "hold", "document": {"text": "abc"}}\n')
        with serve.client() as other:
            assert other.ping() is True and other.status()["connection"] == "connected"
        f = s.makefile("rb")
        answer = json.loads(f.readline())
        assert marker.exists()  # the op is still held: the time limit answered, not the op
        assert answer["id"] == 7 and answer["ok"] is False and answer["error"]["code"] == "timeout"
        assert "apply" in answer["error"]["message"] and answer["error"]["hint"]
        assert f.readline() == b""  # closed: its late result could only be misread as another answer
    with serve.client() as other:
        assert other.ping() is True
    [logged] = serve.log_events("request timed out")
    assert logged["op"] == "apply" and logged["request_id"] == 7

    marker.unlink()
    with serve.client() as c:
        assert c.apply("hold", {"text": "abcd"}) == 4  # fast again; the held op finished in the background
    wait_until(lambda: _threads_and_fds(serve.process.pid)[0] <= before[0] + 2, timeout_s=30,
               message=f"threads back to {before[0]}")


def test_client_reopens_a_connection_the_daemon_closed_while_idle(tmp_path, mongo_server, db_name, serve_factory):
    """The daemon answers `idle_timeout` and closes a quiet connection; the Python client's next request
    opens a new one and is answered (the request was never read, so nothing runs twice)."""
    serve = serve_factory(registry(tmp_path, mongo_server, db_name, listen="null, idle_timeout_s: 0.5"))
    with serve.client() as client:
        assert client.ping() is True
        first = client._sock
        with socket.socket(socket.AF_UNIX) as probe:  # a raw connection shows when the idle limit has struck
            probe.connect(serve.socket)
            probe.settimeout(30)
            assert b"idle_timeout" in probe.recv(4096)
        time.sleep(0.2)  # the client's connection is older than the probe's: it was closed first
        assert client.ping() is True
        assert client._sock is not first


def test_first_sigterm_waits_for_the_batch_in_hand_second_exits_at_once(tmp_path, mongo_server, db_name, db,
                                                                        serve_factory, monkeypatch):
    """SIGTERM while a model holds a batch: the daemon waits for it (still alive); a second SIGTERM ends it at
    once (128 + 15), and no resume point covers the unfinished batch, so a restart computes it."""
    serve, marker, _ = _holding(tmp_path, mongo_server, db_name, db, serve_factory, monkeypatch, "held", 3)
    serve.process.send_signal(signal.SIGTERM)
    wait_until(lambda: serve.log_events("stopping: finishing the batch in hand"), message="the first signal")
    assert serve.alive()  # finishing the batch in hand: the model still holds it
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(30) == 128 + signal.SIGTERM
    marker.unlink()
    serve.start()
    wait_until(lambda: db.docs.count_documents({"_outputs.text.hold": {"$exists": True}}) == 3,
               message="the unfinished batch computed after the restart")
