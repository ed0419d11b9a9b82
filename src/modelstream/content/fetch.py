"""Bytes behind a `_content.url`: http(s) fetched by a thread pool into a disk cache, file:// read in place.

- http(s)://  fetched with a per-request timeout, a size limit and bounded retries (connection
  errors, timeouts, 5xx, 408, 429; other 4xx fail at once), then kept in `<data_dir>/content/`
  under the SHA-256 of the URL. The cache is never written back into a document (the
  `collection` store promises never to touch the user's collection) and never expires: a URL is
  taken to name fixed content. Delete the folder to fetch everything again.
- file://     an absolute path (`file:///data/a.jpg`) or a path relative to the registry's folder
  (`file://images/a.jpg`, the tutorial's form), read in place, not copied; same size limit.

A batch's URLs are fetched together before its model runs (`prefetch`); a URL that failed there
is not fetched again for FAILURE_MEMO_S, so the document fails at once with the same reason.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelstream.content.types import ContentError

FAILURE_MEMO_S = 60.0
CHUNK = 1 << 16
_RETRY_STATUS = {408, 429}


class Fetcher:
    def __init__(self, cache_dir: Path, base_dir: Path, *, workers: int = 8, timeout_s: float = 10.0,
                 max_bytes: int = 20 << 20, retries: int = 2):
        self.cache_dir = Path(cache_dir)
        self.base_dir = Path(base_dir)
        self.workers = workers
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.retries = retries
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[float, ContentError]] = {}

    # -- the public face -----------------------------------------------------------------------

    def get(self, address: str) -> bytes:
        """The bytes at a URL (cached, or fetched now); ContentError says why not."""
        scheme = urllib.parse.urlsplit(address).scheme.lower()
        if scheme == "file":
            return self._read_file(address)
        if scheme not in ("http", "https"):
            raise ContentError(f"cannot fetch {address!r}: unsupported scheme (use file://, http:// or https://)")
        cached = self.cache_path(address)
        if cached.exists():
            return cached.read_bytes()
        with self._lock:
            memo = self._failed.get(address)
        if memo is not None and time.monotonic() - memo[0] < FAILURE_MEMO_S:
            raise memo[1]
        return self._fetch(address)

    def prefetch(self, addresses: list[str]) -> dict[str, ContentError]:
        """Fetch the http(s) URLs not yet cached, concurrently; returns the ones that failed."""
        todo = sorted({a for a in addresses if urllib.parse.urlsplit(a).scheme.lower() in ("http", "https")
                       and not self.cache_path(a).exists()})
        if not todo:
            return {}
        failures: dict[str, ContentError] = {}
        for address, error in zip(todo, self._executor().map(self._try_fetch, todo)):
            if error is not None:
                failures[address] = error
        return failures

    def cache_path(self, address: str) -> Path:
        digest = hashlib.sha256(address.encode("utf-8")).hexdigest()
        return self.cache_dir / digest[:2] / digest

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- http(s) -------------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="fetch")
            return self._pool

    def _try_fetch(self, address: str) -> ContentError | None:
        try:
            self._fetch(address)
            return None
        except ContentError as exc:
            return exc

    def _fetch(self, address: str) -> bytes:
        attempts = 0
        while True:
            attempts += 1
            try:
                data = self._download(address)
                break
            except _Permanent as exc:
                self._remember(address, ContentError(f"cannot fetch {address}: {exc}", attempts))
            except (OSError, http.client.HTTPException, _Transient) as exc:
                if attempts <= self.retries:
                    time.sleep(0.1 * 2 ** (attempts - 1))
                    continue
                cause = exc.reason if isinstance(getattr(exc, "reason", None), BaseException) else exc
                self._remember(address, ContentError(
                    f"cannot fetch {address}: {type(cause).__name__}: {cause} (after {attempts} attempts)", attempts))
        self._store(address, data)
        with self._lock:
            self._failed.pop(address, None)
        return data

    def _remember(self, address: str, error: ContentError) -> None:
        now = time.monotonic()
        with self._lock:
            self._failed = {a: m for a, m in self._failed.items() if now - m[0] < FAILURE_MEMO_S}
            self._failed[address] = (now, error)
        raise error

    def _download(self, address: str) -> bytes:
        request = urllib.request.Request(address, headers={"User-Agent": "modelstream"})
        deadline = time.monotonic() + self.timeout_s
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310 - the scheme is checked
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in _RETRY_STATUS:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
            raise _Permanent(f"HTTP {exc.code} {exc.reason}") from exc
        with response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                raise _Permanent(f"{int(length)} bytes is over the limit of {self.max_bytes} (fetch.max_bytes)")
            parts, size = [], 0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise _Permanent(f"more than {self.max_bytes} bytes (fetch.max_bytes)")
                if time.monotonic() > deadline:
                    raise _Transient(f"download took longer than {self.timeout_s}s (fetch.timeout_s)")
                parts.append(chunk)
        return b"".join(parts)

    def _store(self, address: str, data: bytes) -> None:
        path = self.cache_path(address)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers see the whole file or none
        except OSError:
            pass  # a cache that cannot be written costs a refetch, not the document

    # -- file:// -------------------------------------------------------------------------------

    def resolve_file(self, address: str) -> Path:
        """file:///abs/path is absolute; file://rel/path is relative to the registry's folder."""
        rest = address[len("file://"):]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        path = Path(urllib.parse.unquote(rest))
        return path if path.is_absolute() else self.base_dir / path

    def _read_file(self, address: str) -> bytes:
        path = self.resolve_file(address)
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ContentError(f"cannot read {address}: {size} bytes is over the limit of {self.max_bytes} "
                                   "(fetch.max_bytes)")
            return path.read_bytes()
        except OSError as exc:
            raise ContentError(f"cannot read {address} ({path}): {exc.strerror or exc}") from exc


class _Transient(Exception):
    """Worth another try."""


class _Permanent(Exception):
    """Trying again will not help (4xx, too large)."""
