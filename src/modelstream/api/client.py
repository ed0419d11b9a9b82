"""A small Python client for the socket API.

    with Client("127.0.0.1:7070") as c:
        c.search("minilm", like={"text": "a dog in the snow"}, n=5)
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from typing import Any

from modelstream.api import protocol
from modelstream.errors import ApiError


class Client:
    def __init__(self, address: str, *, token: str | None = None, timeout_s: float = 30.0):
        """`address`: HOST:PORT, or the path of a Unix socket."""
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._file = None

    def connect(self) -> "Client":
        if ":" in self.address and not self.address.startswith(("/", ".")):
            host, _, port = self.address.rpartition(":")
            self._sock = socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout_s)
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout_s)
            self._sock.connect(self.address)
        self._file = self._sock.makefile("rwb")
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a closed peer: what is still buffered has nowhere to go
            if self._file:
                self._file.close()
        if self._sock:
            self._sock.close()
        self._sock = self._file = None

    def __enter__(self) -> "Client":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return the response, or raise ApiError for `ok: false`.

        A connection the daemon closed while it sat idle (`api.idle_timeout_s`) is opened again and the
        request sent once more: the daemon never read it, so nothing runs twice.
        """
        request = {"id": next(self._ids), "op": op, **fields}
        if self.token:
            request["token"] = self.token
        reused = self._sock is not None
        line = self._exchange(request)
        if reused and (not line or _error_code(line) == "idle_timeout"):
            self.close()
            line = self._exchange(request)
        if not line:
            raise ApiError("closed", f"the daemon at {self.address} closed the connection")
        response = protocol.decode(line)
        if not response.get("ok"):
            error = response.get("error", {})
            raise ApiError(error.get("code", "error"), error.get("message", "request failed"), hint=error.get("hint"))
        return response

    def _exchange(self, request: dict[str, Any]) -> bytes:
        if self._sock is None:
            self.connect()
        try:
            self._file.write(protocol.encode(request))
            self._file.flush()
            return self._file.readline()
        except (BrokenPipeError, ConnectionResetError):
            return b""

    def ping(self) -> bool:
        return self.request("ping")["pong"]

    def search(self, index: str | None = None, *, like: dict | None = None, vector: Any = None,
               n: int = 10, filter: dict | None = None, project: list | None = None) -> list[dict]:
        """`vector`: a list of numbers or an array; it travels as a BSON float32 binary vector (Extended JSON
        `$binary`), which the daemon decodes far faster than a list of floats in JSON text."""
        fields: dict[str, Any] = {"n": n}
        if vector is not None:
            vector = _binary_vector(vector)
        for key, value in (("index", index), ("like", like), ("vector", vector), ("filter", filter),
                           ("project", project)):
            if value is not None:
                fields[key] = value
        return self.request("search", **fields)["results"]

    def apply(self, model: str, document: dict) -> Any:
        return self.request("apply", model=model, document=document)["output"]

    def status(self) -> dict:
        return self.request("status")["status"]

    def models(self) -> list[dict]:
        return self.request("models")["models"]


def _error_code(line: bytes) -> str | None:
    try:
        response = protocol.decode(line)
    except ApiError:
        return None
    return (response.get("error") or {}).get("code") if response.get("id") is None else None


def _binary_vector(vector: Any) -> Any:
    from bson.binary import Binary, BinaryVectorDtype

    if isinstance(vector, Binary):
        return vector
    import numpy as np

    values = np.asarray(vector, dtype=np.float32).ravel()
    if not np.isfinite(values).all():
        return vector  # as given: the daemon names what is wrong with it
    return Binary.from_vector(values.tolist(), BinaryVectorDtype.FLOAT32)
