"""The socket server: TCP and a Unix socket, a thread per connection, limits on everything.

A bad line gets an error answer and the connection stays open; nothing a client sends can
stop the daemon. Off loopback, every request must carry the token (compared in constant time).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from modelstream import log
from modelstream.api import protocol
from modelstream.api.ops import Operations
from modelstream.errors import ApiError, ConfigError
from modelstream.registry.spec import ApiSpec

logger = log.get("modelstream.api")


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


class _Handler(socketserver.StreamRequestHandler):
    server: "_Mixin"

    def handle(self) -> None:
        api: ApiServer = self.server.api
        if not api.slots.acquire(blocking=False):
            self._send({"id": None, "ok": False, "error": {"code": "busy", "message": "too many connections"}})
            return
        try:
            self.connection.settimeout(api.spec.idle_timeout_s)
            while not api.closing.is_set():
                try:
                    line = self.rfile.readline(api.spec.max_line_bytes + 1)
                except (TimeoutError, OSError):
                    return
                if not line:
                    return
                if len(line) > api.spec.max_line_bytes and not line.endswith(b"\n"):
                    self._send(protocol.error(None, ApiError(
                        "too_large", f"request line over {api.spec.max_line_bytes} bytes")))
                    return  # the rest of the line cannot be framed: close
                if line.strip():
                    self._send(api.answer(line, self.server.needs_token))
        finally:
            api.slots.release()

    def _send(self, response: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
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

    def answer(self, line: bytes, needs_token: bool) -> dict[str, Any]:
        request_id = None
        try:
            request = protocol.decode(line)
            request_id = request.get("id")
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
