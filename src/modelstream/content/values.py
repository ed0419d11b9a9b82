"""Convert between what BSON stores and what models take and give.

Vectors are stored as BSON binary vectors (float32, subtype 9) unless a model asks for plain
arrays; on the way back into a model (a `features` chain) they become numpy arrays again.
"""

from __future__ import annotations

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
    """A document value as a model sees it, with the built-in types and no fetching.

    The daemon and the API use `reader_for(registry).decode`, which adds the registry's own
    types and fetches `url` content; this is for values already at hand (stored outputs).
    """
    vector = vector_of(value) if isinstance(value, Binary) else None
    if vector is not None:
        return vector
    if isinstance(value, dict) and "_content" in value:
        from modelstream.content.types import BUILTIN_TYPES, ContentError

        content = value["_content"]
        if not isinstance(content, dict) or content.get("bytes") is None:
            raise ContentError("_content has no bytes (url content is fetched by the daemon's reader)")
        return BUILTIN_TYPES.decode(content, bytes(content["bytes"]))
    return value
