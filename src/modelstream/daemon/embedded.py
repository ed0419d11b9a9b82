"""The embedded database: SecantusDB as a separate process on loopback (GPL: never imported).

Used when the registry names no `database.uri`: the quick start and the tests. Its data lives
under the registry's data_dir, so documents survive a restart of the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymongo

from modelstream import log
from modelstream.errors import ServerError

logger = log.get("modelstream.embedded")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the daemon dies, even by kill -9, so none is left behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedServer:
    def __init__(self, storage: Path, port: int | None = None, *, tie_to_parent: bool = True):
        self.storage = Path(storage)
        self.port = port or free_port()
        self.tie_to_parent = tie_to_parent
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout_s: float = 60.0) -> "EmbeddedServer":
        try:
            import secantus  # noqa: F401 - only to fail early with a hint; it runs as its own process
        except ImportError as exc:
            raise ServerError("the embedded server (SecantusDB) is not installed",
                              hint="pip install 'modelstream[embedded]', or set database.uri to a MongoDB "
                                   "replica set") from exc
        self.storage.mkdir(parents=True, exist_ok=True)
        log_file = open(self.storage / "server.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", str(self.storage), "--log-level", "WARNING"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if self.tie_to_parent else None,
        )
        deadline = time.monotonic() + timeout_s
        client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            while True:
                if self.process.poll() is not None:
                    raise ServerError(f"the embedded server exited with code {self.process.returncode}",
                                      hint=f"see {self.storage / 'server.log'}; is port {self.port} taken?")
                try:
                    client.admin.command("ping")
                    break
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise ServerError(f"the embedded server did not answer within {timeout_s:.0f}s",
                                          hint=f"see {self.storage / 'server.log'}") from None
                    time.sleep(0.1)
        finally:
            client.close()
        logger.info("embedded server started", uri=self.uri, storage=str(self.storage), pid=self.process.pid)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        logger.info("embedded server stopped", uri=self.uri)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
