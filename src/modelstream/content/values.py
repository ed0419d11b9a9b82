"""Convert between what BSON stores and what models take and give.

Vectors are stored as BSON binary vectors (float32, subtype 9) unless a model asks for plain
arrays; on the way back into a model (a `features` chain) they become numpy arrays again.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from bson.binary import Binary, BinaryVectorDtype

VECTOR_SUBTYPE = 9
_FLOAT32_HEADER = BinaryVectorDtype.FLOAT32.value + b"\x00"  # dtype byte, then padding 0


def _as_numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    return value


def to_stored(value: Any, vector_format: str = "binary") -> Any:
    """A model output as a BSON-ready value: 1-D float arrays become vectors; numpy scalars plain numbers."""
    value = _as_numpy(value)
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.dtype.kind == "f":
            vector = value.astype(np.float32, copy=False)
            if vector_format == "array":
                return vector.tolist()
            return Binary(_FLOAT32_HEADER + vector.tobytes(), VECTOR_SUBTYPE)
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_stored(v, "array") for v in value]
    if isinstance(value, dict):
        return {str(k): to_stored(v, vector_format) for k, v in value.items()}
    return value


def vector_of(value: Any) -> np.ndarray | None:
    """A stored output as a float32 vector, or None when it is not one."""
    if isinstance(value, Binary) and value.subtype == VECTOR_SUBTYPE:
        raw = bytes(value)
        if raw[:2] != _FLOAT32_HEADER:
            return np.asarray(value.as_vector().data, dtype=np.float32)
        return np.frombuffer(raw, dtype=np.float32, offset=2)
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False).ravel()
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in value):
        return np.asarray(value, dtype=np.float32)
    return None


def decode_input(value: Any) -> Any:
    """A document value as a model sees it: vectors as numpy, `_content` as its decoded object."""
    vector = vector_of(value) if isinstance(value, Binary) else None
    if vector is not None:
        return vector
    if isinstance(value, dict) and "_content" in value:
        return _decode_content(value["_content"])
    return value


def _decode_content(content: dict) -> Any:
    kind = content.get("type")
    data = content.get("bytes")
    if data is None:
        raise ValueError(f"_content of type {kind!r} has no bytes (url content is not fetched yet)")
    if kind == "image":
        from PIL import Image

        image = Image.open(io.BytesIO(bytes(data)))
        image.load()  # decode now, so a truncated file fails here, on this document
        return image
    if kind in ("float_tensor", "ndarray"):
        dtype = np.dtype(content.get("dtype", "float32"))
        array = np.frombuffer(bytes(data), dtype=dtype)
        shape = content.get("shape")
        return array.reshape(shape) if shape else array
    raise ValueError(f"unknown _content type {kind!r}")
