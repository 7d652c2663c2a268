"""The uvicorn server the service runs: its settings, the listening sockets, a draining shutdown.

`python -m app.serve` (and `--workers N` through `app.server.workers`) runs it; the benchmark's bare
baseline runs on the same settings (`uvicorn_config`, `tune_gc`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from app import logs
from app.config import Settings
from app.server.connections import ConnectionLimits, protocol_classes
from app.server.frames import bounded_protocol

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 10
LOG = logging.getLogger("uvicorn.error")
FD_RESERVE = 256  # descriptors kept for files, Redis, upstreams and the listening sockets
YOUNG_GC_THRESHOLD = 10_000  # net new container objects between young collections (CPython: 700)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but open sessions hear `server_shutdown` before the process goes.

    uvicorn's own shutdown closes WebSockets with 1012 and no word; here the listening sockets are
    closed first (no new upgrades), then every session is told and closed, then uvicorn finishes.
    """

    def __init__(self, config: uvicorn.Config, *, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        logs.write_through()  # uvicorn's last lines must not wait for a loop pass that never comes
        for server in self.servers:
            server.close()
        services = getattr(self.app.state, "services", None)
        if services is not None:
            await services.sessions.drain(timeout=DRAIN_SECONDS)
        await super().shutdown(sockets=sockets)


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, host: str, port: int, log_level: str, bare: bool = False
) -> uvicorn.Config:
    """The uvicorn settings the service runs with: every connection and frame bound from `settings`.

    `bare` is the benchmark's floor (`bench.bare`, `bench.peer`): the same protocol classes and
    process settings without the per-frame rate.
    """
    logs.lighten()
    http, edge_ws = protocol_classes(connection_limits(settings))
    ws: type[asyncio.Protocol] = edge_ws
    if not bare:  # reading tied to the write buffer, every frame rate-limited
        ws = bounded_protocol(edge_ws, settings)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        ws=ws,
        log_config=logs.config(log_level.upper(), settings.log_format),
        log_level=log_level,
        proxy_headers=False,  # app.edge.proxies.ForwardedHeaders, with REALTIME_TRUSTED_PROXIES
        timeout_graceful_shutdown=DRAIN_SECONDS + 5,
        # Twice the frame limit, so that the session answers an over-size frame with its own close.
        ws_max_size=max(settings.max_frame_bytes * 2, 1 << 20),
        # A small compressed frame can inflate to the frame limit inside the edge: off unless asked.
        ws_per_message_deflate=settings.ws_compression,
    )


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The connection bounds, with the cap lowered to what the process's descriptor limit allows.

    The soft `RLIMIT_NOFILE` is raised toward the hard one first: past it, `accept()` fails for
    every client (mint and handshakes alike) until some connection closes, so the cap must bite first.
    """
    wanted = settings.max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    cap = settings.max_connections
    if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < cap:
        cap = max(1, soft - FD_RESERVE)
        logger.warning(
            "REALTIME_MAX_CONNECTIONS=%d is above what the descriptor limit (%d) allows: capping at %d",
            settings.max_connections,
            soft,
            cap,
        )
    return ConnectionLimits(handshake_timeout=settings.handshake_timeout_seconds, max_connections=cap)


def tune_gc() -> None:
    """Garbage collector settings for a long-running server; called once, just before it serves.

    What start-up allocated (modules, schemas, the app) is collected once and then frozen: later
    collections never scan it again. The young generation is collected every 10,000 net new
    container objects instead of 700: a handshake allocates a few hundred, nearly all freed by
    reference counting, and frequent young collections only scanned handshakes still in flight.
    The benchmark's bare baseline runs with the same settings.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


def listen(config: uvicorn.Config, admin_port: int | None) -> list[socket.socket]:
    """The listening sockets: the public one (`--host`, `--port`) and, with an admin port, 127.0.0.1:<it>.

    Bound here (not by uvicorn) so that worker processes can share them and so that the admin
    listener exists; the "Uvicorn running on ..." line is logged as uvicorn does.
    """
    sockets = [config.bind_socket()]
    if admin_port is not None:
        admin = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        admin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            admin.bind(("127.0.0.1", admin_port))
        except OSError as exc:
            admin.close()
            raise SystemExit(
                f"error: cannot listen on the admin port 127.0.0.1:{admin_port}: {exc}"
            ) from None
        admin.set_inheritable(True)
        sockets.append(admin)
        LOG.info("Admin listener (/metrics, /readyz) on http://127.0.0.1:%d", admin_port)
    return sockets
