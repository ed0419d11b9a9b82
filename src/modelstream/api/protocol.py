"""Wire format: one JSON object per line each way, the request's `id` echoed back.

Values JSON lacks (ObjectId, dates, binary) travel as relaxed MongoDB Extended JSON.

Both directions take a fast path through the standard `json` module when they can: bson's own
`dumps` first walks the whole value converting it (every float of a 384-d vector, one by one), and
its `loads` runs a hook on every object. The output and the decoded values are the same.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from bson import json_util

from modelstream.errors import ApiError

OPTIONS = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)
_EXTENDED_KEY = b'"$'  # every Extended JSON wrapper has a key starting with `$`


def decode(line: bytes) -> dict[str, Any]:
    try:
        if _EXTENDED_KEY in line:
            request = json_util.loads(line.decode("utf-8"), json_options=OPTIONS)
        else:  # plain JSON (a search by a list of floats): no per-object hook to run
            request = _plain_json(line)
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ApiError("bad_json", f"the line is not JSON: {exc}",
                       hint="send one JSON object per line, e.g. {\"id\": 1, \"op\": \"ping\"}") from exc
    if not isinstance(request, dict):
        raise ApiError("bad_request", f"a request must be a JSON object, not {type(request).__name__}")
    return request


def _plain_json(line: bytes) -> Any:
    """orjson first: 384 floats parse in 12 us against the json module's 130 us (the bulk of a search's
    cost on the daemon's side); the json module where orjson refuses what JSON allows (integers past
    64 bits), so both accept the same lines and fail with the same messages."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line.decode("utf-8"))


def encode(response: dict[str, Any]) -> bytes:
    try:  # JSON's own types as they are; the encoder asks `_extended` only for the others (ObjectId, dates...)
        text = json.dumps(response, default=_extended, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):  # NaN and infinities (Extended JSON has a form for them), unsupported types
        text = json_util.dumps(response, json_options=OPTIONS)
    return (text + "\n").encode("utf-8")


def _extended(value: Any) -> Any:
    return json_util.default(value, json_options=OPTIONS)  # raises TypeError for what bson cannot write either


def error(request_id: Any, exc: ApiError) -> dict[str, Any]:
    body = {"code": exc.code, "message": exc.message}
    if exc.hint:
        body["hint"] = exc.hint
    return {"id": request_id, "ok": False, "error": body}


def ok(request_id: Any, **fields: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, **fields}


def to_plain(value: Any) -> Any:
    """For callers that want plain JSON (the CLI's --json): Extended JSON, relaxed."""
    return json.loads(json_util.dumps(value, json_options=OPTIONS))
