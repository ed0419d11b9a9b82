"""Wire format: one JSON object per line each way, the request's `id` echoed back.

Values JSON lacks (ObjectId, dates, binary) travel as relaxed MongoDB Extended JSON.
"""

from __future__ import annotations

import json
from typing import Any

from bson import json_util

from modelstream.errors import ApiError

OPTIONS = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)


def decode(line: bytes) -> dict[str, Any]:
    try:
        request = json_util.loads(line.decode("utf-8"), json_options=OPTIONS)
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ApiError("bad_json", f"the line is not JSON: {exc}",
                       hint="send one JSON object per line, e.g. {\"id\": 1, \"op\": \"ping\"}") from exc
    if not isinstance(request, dict):
        raise ApiError("bad_request", f"a request must be a JSON object, not {type(request).__name__}")
    return request


def encode(response: dict[str, Any]) -> bytes:
    return (json_util.dumps(response, json_options=OPTIONS) + "\n").encode("utf-8")


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
