"""app.edge.dispatch.App: direct routes answer as Starlette routing would, middleware and handlers
included."""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from app.edge.dispatch import App, DirectRoute, DirectWebSocketRoute


class Boom(Exception):
    """Handled by the app's handler for it."""


class Tag:
    """User middleware: marks every response start, HTTP and WebSocket alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                message = {**message, "headers": [*message.get("headers", []), (b"x-tag", b"1")]}
            await send(message)

        await self.app(scope, receive, tagged)


async def endpoint(request: Request) -> Response:
    what = request.query_params.get("raise")
    if what == "handled":
        raise Boom("handled")
    if what == "http":
        raise HTTPException(418, "teapot")
    if what == "bug":
        raise RuntimeError("a bug")
    return JSONResponse({"ok": True, "path_params": request.path_params})


async def socket(websocket: WebSocket) -> None:
    if websocket.query_params.get("deny"):
        await websocket.send_denial_response(JSONResponse({"denied": True}, status_code=403))
        return
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


async def on_boom(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "boom"}, status_code=400)


async def on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def on_anything(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "internal"}, status_code=500)


def make_app(direct: bool) -> App:
    http, websocket = (DirectRoute, DirectWebSocketRoute) if direct else (Route, WebSocketRoute)
    return App(
        routes=[http("/x", endpoint, methods=["POST"]), websocket("/ws", socket)],
        exception_handlers={Boom: on_boom, HTTPException: on_http, Exception: on_anything},
        middleware=[Middleware(Tag)],
    )


def answer(client: TestClient, method: str, url: str) -> tuple[int, object, str | None]:
    response = client.request(method, url)
    return response.status_code, response.json(), response.headers.get("x-tag")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/x"),
        ("POST", "/x?raise=handled"),
        ("POST", "/x?raise=http"),
        ("POST", "/x?raise=bug"),
        ("GET", "/x"),  # not a direct route: Starlette's 405
        ("POST", "/x/"),  # nor this: Starlette's 404 (or its redirect)
    ],
    ids=["ok", "handled-error", "http-exception", "unexpected", "wrong-method", "other-path"],
)
def test_direct_http_route_answers_as_starlette_does(method: str, url: str) -> None:
    with (
        TestClient(make_app(direct=True), raise_server_exceptions=False) as direct,
        TestClient(make_app(direct=False), raise_server_exceptions=False) as routed,
    ):
        assert answer(direct, method, url) == answer(routed, method, url)


def test_an_unexpected_error_on_a_direct_route_reaches_the_server() -> None:
    """As with Starlette's error middleware: the catch-all answers 500, then the error is raised."""
    with TestClient(make_app(direct=True)) as client, pytest.raises(RuntimeError, match="a bug"):
        client.post("/x?raise=bug")


def test_direct_websocket_route_runs_the_endpoint_inside_the_user_middleware() -> None:
    with TestClient(make_app(direct=True)) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello"
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/ws?deny=1"):
                pass
    assert denied.value.status_code == 403
    assert denied.value.json() == {"denied": True}
    assert denied.value.headers["x-tag"] == "1"


def test_middleware_added_after_construction_wraps_the_direct_routes() -> None:
    app = App(routes=[DirectRoute("/x", endpoint, methods=["POST"])], exception_handlers={})
    app.add_middleware(Tag)
    with TestClient(app) as client:
        response = client.post("/x")
    assert response.status_code == 200 and response.headers["x-tag"] == "1"
