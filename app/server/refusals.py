"""Answers to requests refused before the app runs: fixed JSON bodies that echo nothing, 503 and 431."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.responses import Response as HTTPResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Response
from websockets.server import ServerProtocol

from app import logs
from app.edge.responses import error_response
from app.exceptions import TooManyConnectionsError

TOO_BIG_REASON = (
    "message too big"  # the close reason for an over-size message: the numbers stay inside the edge
)

# What a client is told when the request never reaches the app. The message is fixed per status:
# nothing from the request is echoed (a malformed `Sec-WebSocket-Protocol` may carry a ticket).
_REFUSALS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "the request is malformed"),
    403: ("forbidden", "the WebSocket handshake was refused"),
    405: ("method_not_allowed", "a WebSocket handshake must be a GET request"),
    414: ("request_too_large", "the request line is too long"),
    426: ("invalid_request", "this endpoint expects a WebSocket upgrade"),
    431: ("request_too_large", "the request headers are too large"),
    505: ("invalid_request", "a WebSocket handshake needs HTTP/1.1"),
}


def refusal_body(status: int) -> bytes:
    """The JSON error body for a request refused before the app: fixed text, nothing echoed."""
    code, message = _REFUSALS.get(status, ("internal_error", "the server failed; see its log"))
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer beyond the connection cap: `503 too_many_connections`, before any work."""
    response = error_response(
        TooManyConnectionsError("this server has too many open connections; retry shortly", retry_after=1)
    )
    response.headers["Connection"] = "close"
    if scope["type"] == "websocket":
        await WebSocket(scope, receive, send).send_denial_response(response)
        logs.DENIED.set(True)  # a denial is an ordinary answer: no ERROR line after it
    else:
        await response(scope, receive, send)


async def head_too_large(scope: Scope, receive: Receive, send: Send) -> None:
    """431 for a request whose line and headers exceed `connections.MAX_HEAD_BYTES`, before any work."""
    response = HTTPResponse(
        refusal_body(431),
        status_code=431,
        media_type="application/json",
        headers={"Connection": "close", "Cache-Control": "no-store"},
    )
    await response(scope, receive, send)


class RefusingServerProtocol(ServerProtocol):
    """websockets' handshake, with refusals answered by our JSON error body, and a close reason for
    an over-size message that names no limit."""

    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            reason = TOO_BIG_REASON
        super().fail(code, reason)

    def reject(self, status: Any, text: str) -> Response:
        code = HTTPStatus(status)
        body = refusal_body(code.value)
        headers = Headers(
            [
                ("Connection", "close"),
                ("Content-Length", str(len(body))),
                ("Content-Type", "application/json"),
                ("Cache-Control", "no-store"),
            ]
        )
        return Response(code.value, code.phrase, headers, body)
