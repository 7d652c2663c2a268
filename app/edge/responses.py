"""Turning domain errors into HTTP answers: the one place that maps the error tree to responses."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse

from app.exceptions import AuthenticationError, QuotaExceededError, RealtimeError, UnavailableError

NO_STORE = {"Cache-Control": "no-store"}
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class JSONResponse(_StarletteJSONResponse):
    """Starlette's JSON response, rendered by orjson: the same compact UTF-8 JSON in a fraction of
    the time (Starlette's `json.dumps` with options builds a new encoder for every response).

    orjson refuses what it cannot write exactly (an integer over 64 bits, a key that is not a
    string): those rare bodies are written by the standard library, as Starlette would.
    """

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            return _ENCODER.encode(content).encode("utf-8")


def error_body(error: RealtimeError) -> dict[str, Any]:
    """The JSON error body: `{"error": {"code", "message", "details"?}}`."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details:
        body["details"] = error.details
    return {"error": body}


def error_response(error: RealtimeError) -> JSONResponse:
    """Status, the JSON error body, and the headers the error's kind calls for."""
    headers = dict(NO_STORE)
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, UnavailableError | QuotaExceededError) and error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)
