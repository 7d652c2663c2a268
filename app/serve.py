"""`python -m app.serve`: run the service under uvicorn, draining sessions on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import logging.config
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from app import logs
from app.config import Settings
from app.connections import Limits, protocol_classes
from app.exceptions import KeySetError, SettingsError
from app.keys import KeySet
from app.main import create_app
from app.websocket import bounded_protocol

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 10
WORKER_START_GRACE = 10.0  # a worker that dies sooner is broken, not unlucky: stop instead of looping
PR_SET_PDEATHSIG = 1
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
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str,
    ws_max_size: int,
    ws_compression: bool = False,
    limits: Limits | None = None,
    pings_per_second: float | None = None,
    bytes_per_second: float | None = None,
) -> uvicorn.Config:
    """The uvicorn settings the service runs with (the benchmark's bare baseline uses them too)."""
    logs.lighten()
    http, edge_ws = protocol_classes(limits or Limits())
    ws: type[asyncio.Protocol] = edge_ws
    if pings_per_second is not None:  # reading tied to the write buffer, every frame rate-limited
        ws = bounded_protocol(
            edge_ws, frames_per_second=pings_per_second, bytes_per_second=bytes_per_second or 2_097_152
        )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        ws=ws,
        log_config=logs.config(log_level.upper()),
        log_level=log_level,
        proxy_headers=False,  # app.proxies.ForwardedHeaders, with REALTIME_TRUSTED_PROXIES
        timeout_graceful_shutdown=DRAIN_SECONDS + 5,
        ws_max_size=ws_max_size,
        # A small compressed frame can inflate to the frame limit inside the edge: off unless asked.
        ws_per_message_deflate=ws_compression,
    )


def connection_limits(settings: Settings) -> Limits:
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
    return Limits(handshake_timeout=settings.handshake_timeout_seconds, max_connections=cap)


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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: a worker gets SIGTERM when its supervisor dies, so no worker outlives a killed parent."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(argv: list[str], sockets: list[socket.socket], workers: int) -> int:
    """Run `workers` copies of `argv` sharing `sockets`; restart one that dies; SIGTERM/SIGINT drain all.

    Each worker runs in its own session (a terminal's Ctrl-C reaches only this supervisor, which
    passes it on once) and is told to stop if this process dies.
    """
    fds = [sock.fileno() for sock in sockets]
    command = [*argv, "--worker-fds", ",".join(map(str, fds))]
    received: list[int] = []
    failed = False

    def start() -> tuple[subprocess.Popen[bytes], float]:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, pass_fds=fds, start_new_session=True, preexec_fn=_die_with_parent
        )
        LOG.info("Started worker process [%d]", process.pid)
        return process, time.monotonic()

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        for sock in sockets:  # our copy: once the workers close theirs, the port refuses new connections
            sock.close()
        for process, _ in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    running = [start() for _ in range(workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = float("inf")
    while True:
        if received and deadline == float("inf"):
            deadline = time.monotonic() + DRAIN_SECONDS + 20
        for index, (process, started) in enumerate(running):
            code = process.poll()
            if code is None or received:
                continue
            # Exiting by itself (not killed by a signal) right after the start: broken, not unlucky.
            if code >= 0 and time.monotonic() - started < WORKER_START_GRACE:
                LOG.error("worker [%d] exited with %s while starting; stopping", process.pid, code)
                failed = True
                on_signal(signal.SIGTERM, None)
                break
            LOG.warning("worker [%d] exited with %s; starting another", process.pid, code)
            running[index] = start()
        if received and all(process.poll() is not None for process, _ in running):
            break
        if time.monotonic() > deadline:
            for process, _ in running:
                if process.poll() is None:
                    LOG.warning("worker [%d] did not stop in time; killing it", process.pid)
                    process.kill()
        time.sleep(0.1)
    for process, _ in running:
        process.wait()
    LOG.info("Stopped %d workers", workers)
    if failed:
        return 1
    return 130 if received[0] == signal.SIGINT else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
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
    if settings.jwks_url is None:
        try:
            KeySet.load(settings.keys_dir)
        except KeySetError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    if args.workers > 1:
        logs.lighten()
        logging.config.dictConfig(logs.config(args.log_level.upper()))
        probe = uvicorn.Config(_no_app, host=args.host, port=args.port, log_config=None)
        shared = listen(probe, settings.admin_port)
        child = [sys.executable, "-m", "app.serve", "--log-level", args.log_level]
        return supervise(child, shared, args.workers)
    app = create_app(settings)
    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_max_size=max(settings.max_frame_bytes * 2, 1 << 20),
        ws_compression=settings.ws_compression,
        limits=connection_limits(settings),
        pings_per_second=settings.max_frames_per_second,
        bytes_per_second=settings.max_bytes_per_second,
    )
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


async def _no_app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    """The supervisor binds sockets with uvicorn's helper but serves nothing itself."""


if __name__ == "__main__":
    sys.exit(main())
