"""Turning domain errors into HTTP answers: the one place that maps the error tree to responses."""

from __future__ import annotations

from starlette.responses import JSONResponse

from app.exceptions import AuthenticationError, RealtimeError, UnavailableError

NO_STORE = {"Cache-Control": "no-store"}


def error_response(error: RealtimeError) -> JSONResponse:
    """Status, the JSON error body, and the headers the error's kind calls for."""
    headers = dict(NO_STORE)
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, UnavailableError) and error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(error.to_body(), status_code=error.status, headers=headers)
