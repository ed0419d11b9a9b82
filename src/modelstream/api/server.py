"""The socket server: TCP and a Unix socket, a thread per connection, limits on everything.

A bad line gets an error answer and the connection stays open; nothing a client sends can
stop the daemon. Off loopback, every request must carry the token (compared in constant time).
Limits, each answered with an error before the connection closes: line size (`too_large`),
a request line or op over `api.request_timeout_s` (`timeout`), no request for
`api.idle_timeout_s` (`idle_timeout`), more than `api.max_connections` at once (`busy`).
"""

from __future__ import annotations

import contextlib
import heapq
import hmac
import ipaddress
import itertools
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelstream import log
from modelstream.api import protocol
from modelstream.api.ops import Operations
from modelstream.errors import ApiError, ConfigError
from modelstream.registry.spec import ApiSpec

logger = log.get("modelstream.api")

RECV_BYTES = 64 << 10
DEADLINE_TICK_S = 0.05  # the watchdog wakes at most this often: timeouts are that precise, and cost that little


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _TooLarge(Exception):
    """The line grew past api.max_line_bytes without a newline."""


class _Expired(Exception):
    """No complete line in time: `partial` when the line had begun (slow client), else the connection idled."""

    def __init__(self, partial: bool):
        super().__init__()
        self.partial = partial


class _Lines:
    """Request lines off a socket, each with its own deadline.

    A per-read socket timeout alone restarts with every byte, so a client trickling bytes without a
    newline (slowloris) could hold a connection thread for ever: once a line's first byte is in, the
    whole line must follow within `request_s`. Between requests the connection may idle `idle_s`.
    """

    def __init__(self, sock: socket.socket, max_bytes: int):
        self.sock = sock
        self.max_bytes = max_bytes
        self.buffer = bytearray()
        self.scanned = 0  # bytes of `buffer` already searched for a newline

    def next(self, idle_s: float, request_s: float) -> bytes:
        """The next line with its newline; b"" when the client closed. Raises _TooLarge, _Expired, OSError."""
        deadline = None
        while True:
            end = self.buffer.find(b"\n", self.scanned)
            if end >= 0:
                if end > self.max_bytes:
                    raise _TooLarge
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                self.scanned = 0
                return line
            self.scanned = len(self.buffer)
            if self.scanned > self.max_bytes:
                raise _TooLarge
            if self.buffer and deadline is None:
                deadline = time.monotonic() + request_s
            wait = idle_s if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                raise _Expired(partial=True)
            self.sock.settimeout(wait)
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except TimeoutError:
                raise _Expired(partial=deadline is not None) from None
            if not chunk:
                return b""
            self.buffer += chunk


class _Watchdog:
    """Every request's deadline, kept by one thread.

    An op that overruns gets its `timeout` answer from here, and its connection is closed, while the
    op's own thread finishes in the background (Python cannot stop a thread). Such threads stay bounded:
    each holds its connection's slot until the op returns, so at most api.max_connections run at once.
    One thread with a heap costs a search far less than a timer thread or a pool hop per request.
    """

    def __init__(self) -> None:
        self._due: list[list] = []  # heap of [deadline, sequence, callback or None when cancelled]
        self._wake = threading.Condition()
        self._sequence = itertools.count()
        self._closed = False
        threading.Thread(target=self._run, name="api-deadlines", daemon=True).start()

    def watch(self, after_s: float, expire: Callable[[], None]) -> list:
        entry = [time.monotonic() + after_s, next(self._sequence), expire]
        with self._wake:
            heapq.heappush(self._due, entry)
            if self._due[0] is entry:
                self._wake.notify()
        return entry

    @staticmethod
    def cancel(entry: list) -> None:
        entry[2] = None  # dropped when it comes due: cheaper than taking it out of the heap now

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not (self._due and self._due[0][0] <= time.monotonic()):
                    wait = self._due[0][0] - time.monotonic() if self._due else None
                    self._wake.wait(None if wait is None else max(wait, DEADLINE_TICK_S))
                if self._closed:
                    return
                expired = []
                while self._due and self._due[0][0] <= time.monotonic():
                    expired.append(heapq.heappop(self._due)[2])
            for expire in expired:
                if expire is not None:
                    try:
                        expire()
                    except Exception:  # noqa: BLE001 - one connection's trouble must not stop the deadlines
                        logger.exception("request timeout handling failed")


class _Reply:
    """One request's answer, sent exactly once: by its op, or by the watchdog when the op overruns."""

    def __init__(self, handler: "_Handler", limit_s: float):
        self.handler = handler
        self.limit_s = limit_s
        self.request_id: Any = None  # known once the line is decoded
        self.op: Any = None
        self.lock = threading.Lock()
        self.taken = False

    def send(self, response: dict[str, Any]) -> bool:
        """Send the op's answer; False when the watchdog answered first (the connection is then closed)."""
        with self.lock:  # waits, too, until the watchdog is done with the socket, before it is closed
            if self.taken:
                return False
            self.taken = True
        self.handler._send(response)
        return True

    def expire(self) -> None:
        """In the watchdog's thread: answer `timeout` and close, never blocking on a client that does not read."""
        with self.lock:
            if self.taken:
                return
            self.taken = True
            logger.warning("request timed out", op=self.op, request_id=self.request_id, limit_s=self.limit_s,
                           hint="raise api.request_timeout_s, or ask for less (n, filter, batch)")
            response = protocol.error(self.request_id, ApiError(
                "timeout", f"{self.op or 'the request'} did not finish within {self.limit_s:g} s "
                           "(api.request_timeout_s); the connection is closed",
                hint="retry on a new connection, ask for less, or raise api.request_timeout_s"))
            sock = self.handler.connection
            with contextlib.suppress(OSError):
                sock.settimeout(0)
                sock.send(protocol.encode(response))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(socketserver.StreamRequestHandler):
    server: "_Mixin"

    def handle(self) -> None:
        api: ApiServer = self.server.api
        if not api.slots.acquire(blocking=False):
            self._send(protocol.error(None, ApiError(
                "busy", "too many connections", hint="api.max_connections; retry shortly")))
            return
        try:
            self._serve(api)
        finally:
            api.slots.release()

    def _serve(self, api: "ApiServer") -> None:
        spec = api.spec
        lines = _Lines(self.connection, spec.max_line_bytes)
        while not api.closing.is_set():
            try:
                line = lines.next(spec.idle_timeout_s, spec.request_timeout_s)
            except _TooLarge:
                self._send(protocol.error(None, ApiError("too_large", f"request line over {spec.max_line_bytes} bytes",
                                                         hint="api.max_line_bytes")))
                return  # the rest of the line cannot be framed: close
            except _Expired as exc:
                self._send(self._expired(exc, spec))
                return
            except OSError:
                return
            if not line:
                return
            if line.strip() and not self._answer(api, line):
                return  # the watchdog answered `timeout` and closed the connection

    @staticmethod
    def _expired(exc: _Expired, spec: ApiSpec) -> dict[str, Any]:
        if exc.partial:
            logger.info("slow request line: connection closed", limit_s=spec.request_timeout_s)
            return protocol.error(None, ApiError(
                "timeout", f"the request line was not complete within {spec.request_timeout_s:g} s "
                           "(api.request_timeout_s); the connection is closed",
                hint="send each request as one line ending in a newline"))
        return protocol.error(None, ApiError(
            "idle_timeout", f"no request for {spec.idle_timeout_s:g} s (api.idle_timeout_s); the connection is closed",
            hint="reconnect"))

    def _answer(self, api: "ApiServer", line: bytes) -> bool:
        """Answer one request within api.request_timeout_s; False when it overran (answered by the watchdog)."""
        reply = _Reply(self, api.spec.request_timeout_s)
        deadline = api.watchdog.watch(api.spec.request_timeout_s, reply.expire)
        try:
            response = api.answer(line, self.server.needs_token, reply)
        finally:
            api.watchdog.cancel(deadline)
        return reply.send(response)

    def _send(self, response: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            # A client that does not read its answer holds this thread no longer than a slow request would.
            self.connection.settimeout(self.server.api.spec.request_timeout_s)
            self.wfile.write(protocol.encode(response))
            self.wfile.flush()


class _Mixin(socketserver.ThreadingMixIn):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the listen backlog: socketserver's 5 refuses a burst of clients (EAGAIN)
    api: "ApiServer"
    needs_token: bool


class _TCPServer(_Mixin, socketserver.TCPServer):
    pass


class _UnixServer(_Mixin, socketserver.UnixStreamServer):
    pass


class ApiServer:
    def __init__(self, spec: ApiSpec, ops: Operations, *, registry_file: str = "registry"):
        self.spec = spec
        self.ops = ops
        self.slots = threading.BoundedSemaphore(spec.max_connections)
        self.closing = threading.Event()
        self.watchdog = _Watchdog()
        self.servers: list[_Mixin] = []
        self.addresses: list[str] = []
        if spec.listen:
            host, _ = parse_listen(spec.listen)
            if not is_loopback(host) and not spec.token:
                raise ConfigError(f"api.listen {spec.listen} is not loopback, and api.token is not set",
                                  file=registry_file, hint="set api.token (e.g. ${MODELSTREAM_TOKEN}) or listen "
                                                           "on 127.0.0.1")

    def start(self) -> None:
        if self.spec.listen:
            host, port = parse_listen(self.spec.listen)
            server = _TCPServer((host, port), _Handler)
            server.needs_token = not is_loopback(host)
            self._serve(server)
            self.addresses.append(f"{host}:{server.server_address[1]}")
        if self.spec.unix:
            path = Path(self.spec.unix)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old_mask = os.umask(0o117)  # the socket is created 0660
            try:
                server = _UnixServer(str(path), _Handler)
            finally:
                os.umask(old_mask)
            server.needs_token = False
            self._serve(server)
            self.addresses.append(str(path))
        logger.info("api listening", addresses=self.addresses)

    def _serve(self, server: _Mixin) -> None:
        server.api = self
        threading.Thread(target=server.serve_forever, name=f"api-{len(self.servers)}", daemon=True).start()
        self.servers.append(server)

    def answer(self, line: bytes, needs_token: bool, reply: _Reply | None = None) -> dict[str, Any]:
        request_id = None
        try:
            request = protocol.decode(line)
            request_id = request.get("id")
            if reply is not None:  # so that a `timeout` answer names the request
                reply.request_id, reply.op = request_id, request.get("op")
            if needs_token and not hmac.compare_digest(str(request.get("token", "")).encode(),
                                                       (self.spec.token or "").encode()):
                raise ApiError("unauthorized", "missing or wrong token", hint="send {\"token\": ...} in the request")
            return protocol.ok(request_id, **self.ops.dispatch(request))
        except ApiError as exc:
            return protocol.error(request_id, exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one request must not take the server down
            logger.exception("request failed", request_id=request_id)
            return protocol.error(request_id, ApiError("internal", f"{type(exc).__name__}: {exc}"))

    def close(self) -> None:
        self.closing.set()
        self.watchdog.close()
        for server in self.servers:
            server.shutdown()
            server.server_close()
        if self.spec.unix:
            with contextlib.suppress(FileNotFoundError):
                Path(self.spec.unix).unlink()


def tcp_port(server: ApiServer) -> int | None:
    for s in server.servers:
        if isinstance(s, _TCPServer):
            return s.server_address[1]
    return None


__all__ = ["ApiServer", "is_loopback", "parse_listen", "socket", "tcp_port"]
