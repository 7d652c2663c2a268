"""The app: Starlette, with the two hot routes (mint and redemption) called straight from the server.

Starlette hands every request through its error middleware, its exception middleware, the router
and the route's own exception wrapper, and each layer wraps `send` again. For the mint and the
WebSocket handshake that layering cost more than the work of several checks together (bench/,
PERFORMANCE.md), so `App` calls their endpoints directly, with the same answers: the app's exception
handlers (looked up as Starlette does), the user middleware (built around the endpoint once), a
500 from the catch-all handler. Every other route, a wrong method included, goes through Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

HttpEndpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]
WebSocketEndpoint = Callable[[WebSocket], Awaitable[None]]


class App(Starlette):
    """A Starlette app that serves `direct` HTTP routes and `direct_websockets` without its layers.

    Args:
        direct: `{(method, path): endpoint}` for HTTP requests.
        direct_websockets: `{path: endpoint}` for WebSocket connections.
    """

    def __init__(
        self,
        *,
        direct: dict[tuple[str, str], HttpEndpoint],
        direct_websockets: dict[str, WebSocketEndpoint],
        exception_handlers: dict[type[Exception], Handler],
        middleware: Sequence[Middleware] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(middleware=middleware, exception_handlers=exception_handlers, **kwargs)
        self._handlers = exception_handlers
        self._endpoints = direct
        self._websocket_endpoints = direct_websockets
        # Built at the first request, as Starlette builds its middleware stack: middleware added
        # after construction (`add_middleware`) is then in place.
        self._direct: dict[tuple[str, str], ASGIApp] | None = None
        self._direct_websockets: dict[str, ASGIApp] = {}

    def _build(self) -> dict[tuple[str, str], ASGIApp]:
        self._direct_websockets = {
            path: self._wrap(self._websocket(endpoint))
            for path, endpoint in self._websocket_endpoints.items()
        }
        return {
            key: self._outermost(self._wrap(self._http(endpoint)))
            for key, endpoint in self._endpoints.items()
        }

    def _wrap(self, endpoint: ASGIApp) -> ASGIApp:
        """The user middleware around `endpoint`, as Starlette builds it around its router."""
        app = endpoint
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            handler = self._handlers.get(cls)
            if handler is not None and cls is not Exception:
                return handler
        return None

    def _http(self, endpoint: HttpEndpoint) -> ASGIApp:
        """The endpoint with the app's exception handlers, as Starlette's exception middleware."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive, send)
            try:
                response = await endpoint(request)
            except Exception as exc:
                handler = self._handler(exc)
                if handler is None:
                    raise
                response = await handler(request, exc)
            await response(scope, receive, send)

        return app

    def _outermost(self, app: ASGIApp) -> ASGIApp:
        """As Starlette's error middleware, outside the user middleware: an unexpected error gets the
        catch-all handler's answer (when nothing was sent yet), then reaches the server."""
        fallback = self._handlers.get(Exception)

        async def outer(scope: Scope, receive: Receive, send: Send) -> None:
            started = False

            async def watch(message: Message) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await app(scope, receive, watch)
            except Exception as exc:
                if fallback is not None and not started:
                    await (await fallback(Request(scope), exc))(scope, receive, send)
                raise

        return outer

    @staticmethod
    def _websocket(endpoint: WebSocketEndpoint) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await endpoint(WebSocket(scope, receive, send))

        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routes = self._direct
        if routes is None:
            routes = self._direct = self._build()
        kind = scope["type"]
        if kind == "http":
            direct = routes.get((scope["method"], scope["path"]))
        elif kind == "websocket":
            direct = self._direct_websockets.get(scope["path"])
        else:
            direct = None
        if direct is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await direct(scope, receive, send)
