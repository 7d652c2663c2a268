"""`python -m app.serve`: run the service under uvicorn, draining sessions on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from app import logs
from app.config import Settings
from app.exceptions import KeySetError, SettingsError
from app.keys import KeySet
from app.main import create_app

DRAIN_SECONDS = 10
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


def uvicorn_config(app: ASGIApp, *, host: str, port: int, log_level: str, ws_max_size: int) -> uvicorn.Config:
    """The uvicorn settings the service runs with (the benchmark's bare baseline uses them too)."""
    logs.lighten()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=logs.config(log_level.upper()),
        log_level=log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=DRAIN_SECONDS + 5,
        ws_max_size=ws_max_size,
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
    except SettingsError as exc:
        print(f"error: invalid setting {exc.message}", file=sys.stderr)
        return 2
    if settings.jwks_url is None:
        try:
            KeySet.load(settings.keys_dir)
        except KeySetError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    app = create_app(settings)
    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_max_size=max(settings.max_frame_bytes * 2, 1 << 20),
    )
    server = DrainingServer(config, app=app)
    tune_gc()
    try:
        server.run()
    except KeyboardInterrupt:
        # After a clean shutdown uvicorn raises the SIGINT it caught again, and asyncio's runner
        # turns it into KeyboardInterrupt: exit as a shell does after Ctrl-C, without a traceback.
        return 130
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
