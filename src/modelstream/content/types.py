"""Content types: how the bytes of a `{"_content": {"bytes": ..., "type": T}}` field become a model's value.

A type is any object with `decode(bytes) -> value` and, optionally, `encode(value) -> bytes` (the
tutorial's `create_type`). Built in:

  image         Pillow image, fully decoded (a truncated file fails on its own document)
  ndarray       numpy array; the `_content` also holds `dtype` (default float32) and `shape`
  float_tensor  the same, as a float32 torch tensor (the tutorial's FloatTensor)
  json          any JSON value, UTF-8 bytes

A registry adds or overrides types with `types: {name: "module:Class"}` (a class is instantiated
without arguments). Every decoding problem is a ContentError: the document fails, the stream goes on.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from bson.binary import Binary


class ContentError(ValueError):
    """A `_content` value that cannot become a model input (unknown type, bad bytes, broken url)."""

    def __init__(self, message: str, attempts: int = 1):
        super().__init__(message)
        self.attempts = attempts


class Image:
    """Pillow images; encoded as PNG unless the image knows its own format."""

    @staticmethod
    def encode(image: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=image.format or "PNG")
        return buffer.getvalue()

    @staticmethod
    def decode(data: bytes) -> Any:
        from PIL import Image as PILImage

        image = PILImage.open(io.BytesIO(data))
        image.load()  # decode every pixel now, so a truncated file fails here, on this document
        return image


class NdArray:
    """Raw array bytes; `dtype` and `shape` travel beside them in the `_content`."""

    @staticmethod
    def encode(array: Any) -> bytes:
        return np.ascontiguousarray(array).tobytes()

    @staticmethod
    def meta(array: Any) -> dict:
        array = np.asarray(array)
        return {"dtype": array.dtype.str, "shape": list(array.shape)}

    @staticmethod
    def decode(data: bytes, dtype: Any = "float32", shape: Any = None) -> np.ndarray:
        dtype = np.dtype(dtype)
        if len(data) % dtype.itemsize:
            raise ValueError(f"{len(data)} bytes are not a whole number of {dtype} items")
        array = np.frombuffer(data, dtype=dtype).copy()  # writable, and free of the BSON buffer
        return array.reshape(shape) if shape is not None else array


class FloatTensor(NdArray):
    """The tutorial's float_tensor: float32 bytes as a torch tensor."""

    @staticmethod
    def encode(tensor: Any) -> bytes:
        array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        return np.ascontiguousarray(array, dtype=np.float32).tobytes()

    @staticmethod
    def meta(tensor: Any) -> dict:
        return {"dtype": "float32", "shape": list(tensor.shape)}

    @staticmethod
    def decode(data: bytes, dtype: Any = "float32", shape: Any = None) -> Any:
        import torch

        return torch.from_numpy(NdArray.decode(data, dtype, shape).astype(np.float32, copy=False))


class Json:
    @staticmethod
    def encode(value: Any) -> bytes:
        return json.dumps(value).encode("utf-8")

    @staticmethod
    def decode(data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


BUILTIN: dict[str, Any] = {"image": Image(), "ndarray": NdArray(), "float_tensor": FloatTensor(), "json": Json()}
_ARRAY_TYPES = (NdArray, FloatTensor)


class Types:
    """The types one registry knows: the built-ins, then its own (which may replace a built-in)."""

    def __init__(self, user: dict[str, Any] | None = None):
        self.table = {**BUILTIN, **(user or {})}

    def codec(self, kind: Any) -> Any:
        codec = self.table.get(kind) if isinstance(kind, str) else None
        if codec is None:
            raise ContentError(f"unknown content type {kind!r} (known: {', '.join(sorted(self.table))})")
        return codec

    def decode(self, content: dict, data: bytes) -> Any:
        """Bytes of a `_content` as its type's value; ContentError names what went wrong."""
        kind = content.get("type")
        codec = self.codec(kind)
        try:
            if isinstance(codec, _ARRAY_TYPES):
                return codec.decode(data, content.get("dtype", "float32"), content.get("shape"))
            return codec.decode(data)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this document's failure
            raise ContentError(f"cannot decode {kind}: {type(exc).__name__}: {exc}") from exc

    def encode(self, kind: str, value: Any) -> dict:
        """A value as a `{"_content": {...}}` field, ready for pymongo."""
        codec = self.codec(kind)
        content: dict[str, Any] = {"bytes": Binary(codec.encode(value)), "type": kind}
        if isinstance(codec, _ARRAY_TYPES):
            content.update(codec.meta(value))
        return {"_content": content}


BUILTIN_TYPES = Types()


def encode(kind: str, value: Any) -> dict:
    """A value of a built-in type as a `_content` field: `docs.insert_one({"img": encode("image", im)})`."""
    return BUILTIN_TYPES.encode(kind, value)


def url(address: str, kind: str) -> dict:
    """A `_content` field that points at a file:// or http(s):// address."""
    return {"_content": {"url": address, "type": kind}}
