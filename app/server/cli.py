"""`python -m app.serve`: run the service under uvicorn, draining sessions on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging.config
import os
import socket
import sys
from collections.abc import Sequence

import uvicorn

from app import logs
from app.config import Settings
from app.edge.preflight import preflight
from app.exceptions import KeySetError, SettingsError
from app.main import create_app
from app.server import internals
from app.server.runner import DrainingServer, listen, tune_gc, uvicorn_config
from app.server.workers import supervise
from app.upstreams import wsnames


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.serve",
        description=__doc__,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (one per core); needs a redis:// replay store when more than 1",
    )
    parser.add_argument("--worker-fds", help=argparse.SUPPRESS)  # set by the supervisor for its workers
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
    except SettingsError as exc:
        print(f"error: invalid setting {exc.message}", file=sys.stderr)
        return 2
    try:
        internals.check()  # the edge's protocol classes build on these uvicorn releases only
        wsnames.check()  # and the provider link on these websockets releases
    except SettingsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.replay_url == "memory://":
        print(
            f"error: --workers {args.workers} needs a shared replay store: memory:// keeps used tickets "
            "inside one process, so each worker would accept the same ticket again. Set "
            "REALTIME_REPLAY_URL=redis://host:port/db, or run one worker.",
            file=sys.stderr,
        )
        return 2
    if settings.admin_port is not None and settings.admin_port == args.port:
        print(f"error: REALTIME_ADMIN_PORT ({settings.admin_port}) must differ from --port", file=sys.stderr)
        return 2
    try:
        preflight(settings)
    except KeySetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except SettingsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.workers > 1:
        logs.lighten()
        logging.config.dictConfig(logs.config(args.log_level.upper(), settings.log_format))
        probe = uvicorn.Config(_no_app, host=args.host, port=args.port, log_config=None)
        shared = listen(probe, settings.admin_port)
        child = [sys.executable, "-m", "app.serve", "--log-level", args.log_level]
        return supervise(child, shared, args.workers)
    app = create_app(settings)
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_level=args.log_level)
    server = DrainingServer(config, app=app)
    sockets: list[socket.socket] | None = None
    if args.worker_fds:
        sockets = [socket.socket(fileno=int(fd)) for fd in args.worker_fds.split(",")]
    elif settings.admin_port is not None:
        sockets = listen(config, settings.admin_port)
    tune_gc()
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        # After a clean shutdown uvicorn raises the SIGINT it caught again, and asyncio's runner
        # turns it into KeyboardInterrupt: exit as a shell does after Ctrl-C, without a traceback.
        return 130
    return 0 if server.started else 1


# Defaults that are another setting's value, said as such.
_DERIVED = {
    "REALTIME_API_KEYS_FILE": "<keys dir>/api_keys.json",
    "REALTIME_SEAL_KEYS_FILE": "<keys dir>/seal.json",
}


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "unset"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_help() -> str:
    """Every `REALTIME_*` setting with its default, for `--help` (docs/operations.md says more)."""
    rows = [(name, _DERIVED.get(name) or _shown(default)) for name, default in Settings.variables()]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {default}" for name, default in rows]
    return "settings (environment variables, with their defaults; see docs/operations.md):\n" + "\n".join(
        lines
    )


async def _no_app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    """The supervisor binds sockets with uvicorn's helper but serves nothing itself."""


if __name__ == "__main__":
    sys.exit(main())
