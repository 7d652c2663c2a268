"""The app factory: routes, error answers and lifespan wiring; started by `python -m app.serve`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import overload

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from app import logs, redaction
from app.clock import Clock, SystemClock
from app.config import Settings
from app.edge import admin
from app.edge.demo import client, dev_ticket, favicon, page, static
from app.edge.dispatch import App, DirectRoute, DirectWebSocketRoute
from app.edge.metrics import CONTENT_TYPE
from app.edge.mint import mint
from app.edge.proxies import AdminListener, ForwardedHeaders
from app.edge.realtime import realtime
from app.edge.responses import error_response
from app.edge.services import Services
from app.exceptions import RealtimeError, UnavailableError, UnsupportedServerError
from app.session.upstream import Upstream

logger = logging.getLogger(__name__)


async def _on_realtime_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RealtimeError)  # noqa: S101 - registered for this class only
    if request.url.path == "/v3/realtime-sessions":
        request.app.state.services.metrics.mint_error(exc.code).inc()
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": _routing_message(request, exc)}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


#: The routes a client of the API calls, named by a 404 so that a typo is easy to see.
API_ROUTES = (
    "POST /v3/realtime-sessions, GET /v3/realtime (WebSocket), GET /v3/models, GET /.well-known/jwks.json"
)


def _routing_message(request: Request, exc: HTTPException) -> str:
    """What to fix after a 404 or a 405: the path asked for (cut to 64 characters) and what exists."""
    path = redaction.redact(request.url.path)  # a ticket pasted into a path is not echoed
    shown = path if len(path) <= 64 else path[:64] + "..."
    if exc.status_code == 404:
        return (
            f"nothing is served at {shown!r} (paths take no trailing slash); the API's routes: {API_ROUTES}"
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {shown!r}: use {allowed or 'another method'}"
    return str(exc.detail)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": {"code": "internal_error", "message": "the server failed; see its log"}}
    return JSONResponse(body, status_code=500)


async def jwks(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    return JSONResponse(services.keys.current().jwks(), headers={"Cache-Control": "public, max-age=30"})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready when keys are loaded, the replay store accepts a write now and its clock is within the
    skew margin of ours; else 503 with the reasons."""
    services: Services = request.app.state.services
    reasons = []
    if not services.keys.current().keys:
        reasons.append("no verification keys loaded")
    try:
        await services.replay.probe()
    except UnavailableError as exc:
        reasons.append(f"replay store: {exc.message}")
    else:
        if (skew := await services.skew.problem()) is not None:
            reasons.append(f"clock: {skew}")
    if reasons:
        return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


async def models(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    return JSONResponse({"data": services.registry.to_json()})


class EdgeHeader:
    """Adds `X-Realtime-Edge: <name>` to every HTTP response, denial and WebSocket accept."""

    def __init__(self, app: ASGIApp, *, name: str) -> None:
        self.app = app
        self.header = (b"x-realtime-edge", name.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


#: Why an outside server's `create_app()` does not start (docs/decisions.md, "One start command").
UNSUPPORTED_START = (
    "create_app() was called without settings, as a server's --factory option does: that server would "
    "run the service without the edge's connection cap, handshake timeout, frame and byte rates, "
    "worker guard and draining shutdown. Start the service with `python -m app.serve` "
    "(`make run` does); it reads the same REALTIME_* settings."
)


class UnsupportedStart:
    """What `create_app()` gives a server that called it as a factory: an app that refuses to start.

    Its lifespan answers `lifespan.startup.failed` with `UNSUPPORTED_START` (the server logs it and
    exits; uvicorn's --workers supervisor then stops too); run with the lifespan off, it answers every
    request 503 and refuses every WebSocket, so no ticket is ever redeemed without the bounds.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": UNSUPPORTED_START})
            return
        response = error_response(UnsupportedServerError(UNSUPPORTED_START))
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(response)
        else:
            await response(scope, receive, send)


@overload
def create_app(
    settings: Settings, *, clock: Clock | None = None, upstream: Upstream | None = None
) -> Starlette: ...


@overload
def create_app(
    settings: None = None, *, clock: Clock | None = None, upstream: Upstream | None = None
) -> ASGIApp: ...


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    upstream: Upstream | None = None,
) -> Starlette | ASGIApp:
    """Build the app with `settings` (`python -m app.serve` reads them from the environment).

    Called without settings, as `uvicorn --factory app.main:create_app` or another server's factory
    option calls it, it returns `UnsupportedStart`: those servers lack the edge's bounds.
    """
    if settings is None:
        return UnsupportedStart()
    clock = clock or SystemClock()
    logs.install(settings.log_format)
    redaction.add_secrets(settings.secrets())  # provider and relay keys: out of every line and event

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await Services.open(settings, clock=clock, upstream=upstream)
        app.state.services = services
        try:
            yield
        finally:
            await services.aclose()

    app = App(
        routes=[
            # The two hot routes skip Starlette's router (app.edge.dispatch).
            DirectRoute("/v3/realtime-sessions", mint, methods=["POST"]),
            DirectWebSocketRoute("/v3/realtime", realtime),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
            Route("/v3/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v3/admin/sessions", admin.list_sessions, methods=["GET"]),
            Route("/v3/admin/revocations", admin.list_revocations, methods=["GET"]),
            Route("/v3/admin/revocations", admin.revoke, methods=["POST"]),
            Route("/", page, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
            Route("/client/{name}", client, methods=["GET"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Route("/dev/ticket", dev_ticket, methods=["POST"]),
        ],
        exception_handlers={
            RealtimeError: _on_realtime_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        lifespan=lifespan,
        middleware=[
            *([Middleware(EdgeHeader, name=settings.edge_name)] if settings.edge_name else []),
            Middleware(ForwardedHeaders, trusted=settings.trusted_proxies),
            *([Middleware(AdminListener, port=settings.admin_port)] if settings.admin_port else []),
        ],
    )
    # A redirect would make HTTP clients re-send the bearer key elsewhere (docs/api.md).
    app.router.redirect_slashes = False
    app.state.settings = settings
    return app
