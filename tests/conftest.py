"""Fixtures: a real SecantusDB server process on loopback, registries on disk, `modelstream serve` subprocesses."""

from __future__ import annotations

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
        self.process: subprocess.Popen | None = None
        self.log = registry.parent / "serve.log"

    def start(self, timeout_s: float = 60.0) -> "Serve":
        env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelstream", "serve", "-c", str(self.registry), "--json-logs"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=env, cwd=self.registry.parent)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with self.client() as c:
                    c.ping()
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not answer: {self.log.read_text()[-3000:]}") from None
                time.sleep(0.1)

    def client(self) -> Client:
        return Client(self.socket, timeout_s=30).connect()

    def status(self) -> dict:
        with self.client() as c:
            return c.status()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


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
