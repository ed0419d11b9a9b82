"""Index snapshots: FAISS's own serialisation plus the id map and what the index reflects.

One file per index, written atomically (write a temporary file, fsync, rename, fsync the
folder), so a crash leaves the old snapshot or the new one, never half of one. A snapshot
whose measure, type, parameters or model version differ from the registry's is not used:
the index is rebuilt from the collection instead (the collection is the truth).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import bson
import numpy as np
from bson import ObjectId

from modelstream import log
from modelstream.indexers.vector_index import VectorIndex

logger = log.get("modelstream.snapshot")

MAGIC = b"MSIDX001"


def _pack_ids(ids: list[Any]) -> dict[str, Any]:
    """ObjectIds pack as 12 bytes each (fast for millions); anything else as a BSON list."""
    if ids and all(type(i) is ObjectId for i in ids):
        return {"oids": b"".join(i.binary for i in ids)}
    return {"list": ids}


def _unpack_ids(packed: dict[str, Any]) -> list[Any]:
    if "oids" in packed:
        raw = packed["oids"]
        return [ObjectId(raw[k:k + 12]) for k in range(0, len(raw), 12)]
    return list(packed.get("list", []))


def identity(index: VectorIndex, model_version: str) -> dict[str, Any]:
    """What must match for a snapshot to stand for this index."""
    return {"name": index.name, "measure": index.measure, "kind": index.kind,
            "params": {k: v for k, v in vars(index.params).items() if k != "extra"}, "model_version": model_version}


def save_snapshot(index: VectorIndex, path: Path, model_version: str, resume_token: Any = None) -> int:
    """Write the index to `path` atomically; returns the bytes written."""
    state = index.export_state()
    meta = {
        "identity": identity(index, model_version),
        "dim": state["dim"], "next": state["next"], "trained_ivf": state["trained_ivf"],
        "trained_size": state["trained_size"],
        "ints": state["ints"].tobytes(), "dead": state["dead"].tobytes(), "ids": _pack_ids(state["ids"]),
        "resume_token": resume_token,
    }
    header = bson.encode(meta)
    body = b"" if state["faiss"] is None else state["faiss"].tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(header)) + header + body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return len(header) + len(body) + 16


def load_snapshot(index: VectorIndex, path: Path, model_version: str) -> dict[str, Any] | None:
    """Fill `index` from its snapshot; None (and the index untouched) if missing, corrupt or mismatched."""
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        if raw[:8] != MAGIC:
            raise ValueError("not a modelstream index snapshot")
        (size,) = struct.unpack("<Q", raw[8:16])
        meta = bson.decode(raw[16:16 + size])
        body = raw[16 + size:]
    except Exception as exc:  # noqa: BLE001 - any damage means: rebuild from the collection
        logger.warning("index snapshot unreadable: rebuilding from the collection", index=index.name,
                       path=str(path), error=str(exc))
        return None
    expected = identity(index, model_version)
    if meta.get("identity") != expected:
        logger.warning("index snapshot is for another model version or index settings: rebuilding",
                       index=index.name, snapshot=meta.get("identity"), expected=expected)
        return None
    try:
        index.import_state({
            "faiss": np.frombuffer(body, dtype=np.uint8) if body else None,
            "dim": meta["dim"], "next": meta["next"], "trained_ivf": meta["trained_ivf"],
            "trained_size": meta.get("trained_size"),  # absent from snapshots written before IVF retrained
            "ints": np.frombuffer(meta["ints"], dtype=np.int64), "dead": np.frombuffer(meta["dead"], dtype=np.int64),
            "ids": _unpack_ids(meta["ids"]),
        })
    except Exception as exc:  # noqa: BLE001
        index.clear()
        logger.warning("index snapshot corrupt: rebuilding from the collection", index=index.name, error=str(exc))
        return None
    logger.info("index snapshot loaded", index=index.name, vectors=len(index))
    return meta
