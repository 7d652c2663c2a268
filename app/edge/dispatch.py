"""The app: Starlette, with the two hot routes (mint and redemption) called straight from the server.

Starlette hands every request through its error middleware, the user middleware, its exception
middleware, the router and the route's own exception wrapper. For the mint and the WebSocket
handshake the router and the route's wrapper cost more than the work of several checks together
(bench/PERFORMANCE.md), so a route marked `DirectRoute` or `DirectWebSocketRoute` in the one route
table is called from a stack built as Starlette builds its own, from Starlette's public classes
(`ServerErrorMiddleware`, the user middleware, `ExceptionMiddleware`), around the endpoint instead
of the router. Every other request, a wrong method on a direct path included, goes through Starlette.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket


class DirectRoute(Route):
    """A `Route` whose requests `App` passes to the endpoint without the router."""


class DirectWebSocketRoute(WebSocketRoute):
    """A `WebSocketRoute` whose connections `App` passes to the endpoint without the router."""


class App(Starlette):
    """A Starlette app that serves its `DirectRoute`s and `DirectWebSocketRoute`s without the router."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Built at the first request, as Starlette builds its middleware stack: middleware added
        # after construction (`add_middleware`) is then in place.
        self._direct: dict[tuple[str, str], ASGIApp] | None = None
        self._direct_websockets: dict[str, ASGIApp] = {}

    def _build(self) -> dict[tuple[str, str], ASGIApp]:
        http: dict[tuple[str, str], ASGIApp] = {}
        for route in self.router.routes:
            if isinstance(route, DirectRoute):
                app = self._stack(_http(route.endpoint))
                http.update({(method, route.path): app for method in route.methods or ()})
            elif isinstance(route, DirectWebSocketRoute):
                self._direct_websockets[route.path] = self._stack(_websocket(route.endpoint))
        return http

    def _stack(self, endpoint: ASGIApp) -> ASGIApp:
        """`endpoint` inside the layers `Starlette.build_middleware_stack` puts around the router."""
        catch_all = None
        handlers = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                catch_all = value
            else:
                handlers[key] = value
        app: ASGIApp = ExceptionMiddleware(endpoint, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return ServerErrorMiddleware(app, handler=catch_all, debug=self.debug)

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


def _http(endpoint: Any) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


def _websocket(endpoint: Any) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(WebSocket(scope, receive, send))

    return app
