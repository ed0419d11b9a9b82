"""Fixtures: a real SecantusDB server process on loopback, registries on disk, `modelstream serve` subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pymongo
import pytest

from modelstream.api.client import Client
from modelstream.daemon.embedded import EmbeddedServer

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """One embedded server for the whole session; each test gets its own database."""
    server = EmbeddedServer(tmp_path_factory.mktemp("secantus")).start()
    yield server
    server.stop()


@pytest.fixture
def mongo(mongo_server):
    client = pymongo.MongoClient(mongo_server.uri)
    yield client
    client.close()


@pytest.fixture
def db_name():
    return "t_" + uuid.uuid4().hex[:10]


@pytest.fixture
def db(mongo, db_name):
    yield mongo[db_name]
    mongo.drop_database(db_name)


def write_registry(folder: Path, body: str, **values) -> Path:
    path = folder / "registry.yaml"
    path.write_text(textwrap.dedent(body).format(**values))
    return path


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


class Serve:
    """`modelstream serve` as a real subprocess, reached over its real Unix socket."""

    def __init__(self, registry: Path):
        self.registry = registry
        self.socket = str(registry.parent / ".modelstream" / "api.sock")
        self.log = registry.parent / "serve.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 60.0) -> "Serve":
        env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelstream", "serve", "-c", str(self.registry), "--json-logs"],
                stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=self.registry.parent)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}: {self.tail()}")
            try:
                with self.client() as c:
                    c.ping()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not answer: {self.tail()}") from None
                time.sleep(0.05)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout_s: float = 30) -> Client:
        return Client(self.socket, timeout_s=timeout_s).connect()

    def status(self) -> dict:
        with self.client() as c:
            return c.status()

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def terminate(self, timeout_s: float = 60) -> int | None:
        if not self.alive():
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def log_events(self, event: str) -> list[dict]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines() if self.log.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == event:
                    found.append(entry)
        return found


@pytest.fixture
def serve_factory():
    started: list[Serve] = []

    def make(registry: Path) -> Serve:
        serve = Serve(registry).start()
        started.append(serve)
        return serve

    yield make
    for serve in started:
        if serve.process and serve.process.poll() is None:
            serve.kill()
