"""The app factory: routes, error answers and lifespan wiring; `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.clock import Clock, SystemClock
from app.config import Settings
from app.demo import dev_ticket, favicon, page, static
from app.dispatch import App, DirectRoute, DirectWebSocketRoute
from app.exceptions import RealtimeError, UnavailableError
from app.metrics import CONTENT_TYPE
from app.mint import mint
from app.proxies import AdminListener, ForwardedHeaders
from app.realtime import realtime
from app.responses import error_response
from app.services import Services
from app.upstreams.base import Upstream

logger = logging.getLogger(__name__)


async def _on_realtime_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RealtimeError)  # noqa: S101 - registered for this class only
    if request.url.path == "/v3/realtime-sessions":
        request.app.state.services.metrics.mint_error(exc.code).inc()
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


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


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    upstream: Upstream | None = None,
) -> Starlette:
    """Build the app. Without `settings`, they are read from the environment now (not at import)."""
    settings = settings or Settings.from_environ(os.environ)
    clock = clock or SystemClock()
    logs.install()

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
            # The two hot routes skip Starlette's router (app.dispatch).
            DirectRoute("/v3/realtime-sessions", mint, methods=["POST"]),
            DirectWebSocketRoute("/v3/realtime", realtime),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
            Route("/v3/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/", page, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
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
