"""A registry's view of content: its types and its fetcher, turning document values into model inputs.

The daemon and the socket API share one reader per registry (`reader_for`), so a `like` value
sent over the socket decodes exactly as a stored document does.
"""

from __future__ import annotations

import threading
from typing import Any

from bson.binary import Binary

from modelstream.content.fetch import Fetcher
from modelstream.content.types import ContentError, Types
from modelstream.content.values import VECTOR_SUBTYPE, vector_of


class ContentReader:
    def __init__(self, types: Types, fetcher: Fetcher):
        self.types = types
        self.fetcher = fetcher

    def decode(self, value: Any) -> Any:
        """A document value as a model sees it: vectors as numpy, `_content` as its decoded object."""
        if isinstance(value, Binary) and value.subtype == VECTOR_SUBTYPE:
            return vector_of(value)
        if isinstance(value, dict) and "_content" in value:
            return self.decode_content(value["_content"])
        return value

    def decode_content(self, content: Any) -> Any:
        if not isinstance(content, dict):
            raise ContentError("_content must be an object with `type` and `bytes` or `url`")
        self.types.codec(content.get("type"))  # an unknown type fails before anything is fetched
        data = content.get("bytes")
        if data is None:
            address = content.get("url")
            if not isinstance(address, str) or not address:
                raise ContentError("_content has neither `bytes` nor `url`")
            data = self.fetcher.get(address)
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise ContentError(f"_content.bytes must be binary, not {type(data).__name__}")
        return self.types.decode(content, bytes(data))

    def prefetch(self, values: list[Any]) -> None:
        """Fetch the URLs among these values concurrently (failures surface again in `decode`)."""
        self.fetcher.prefetch([u for u in map(url_of, values) if u])


def url_of(value: Any) -> str | None:
    """The url of a `{"_content": {"url": ...}}` value without bytes, else None."""
    if isinstance(value, dict):
        content = value.get("_content")
        if isinstance(content, dict) and content.get("bytes") is None and isinstance(content.get("url"), str):
            return content["url"]
    return None


_READERS: dict[tuple, ContentReader] = {}
_READERS_LOCK = threading.Lock()


def reader_for(registry: Any) -> ContentReader:
    """The reader of a registry (one per distinct types/fetch/data_dir); user types import on first use.

    Raises ConfigErrors (file:line) when a declared type cannot be imported or has no `decode`.
    """
    key = (str(registry.path), str(registry.data_dir), registry.types, registry.fetch)
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is None:
            fetch = registry.fetch
            fetcher = Fetcher(registry.data_dir / "content", registry.folder, workers=fetch.workers,
                              timeout_s=fetch.timeout_s, max_bytes=fetch.max_bytes, retries=fetch.retries)
            reader = _READERS[key] = ContentReader(Types(load_types(registry)), fetcher)
        return reader


def load_types(registry: Any) -> dict[str, Any]:
    """Import the registry's `types:`; a class is instantiated without arguments."""
    from pathlib import Path

    from modelstream.errors import ConfigError, ConfigErrors
    from modelstream.registry.models import import_path

    found: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for spec in registry.types:
        try:
            target = import_path(spec.object, [registry.folder.resolve(), Path.cwd()])
            codec = target() if isinstance(target, type) else target
            if not callable(getattr(codec, "decode", None)):
                raise TypeError("it has no decode(bytes) method")
            found[spec.name] = codec
        except Exception as exc:  # noqa: BLE001 - any import failure is a config error with a line
            errors.append(ConfigError(f"types.{spec.name}: cannot load {spec.object!r}: {type(exc).__name__}: {exc}",
                                      file=str(registry.path), line=spec.line,
                                      hint="a type is `module:Class` with decode(bytes) (and encode(value))"))
    if errors:
        raise ConfigErrors(errors)
    return found
