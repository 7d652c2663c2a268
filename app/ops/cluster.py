"""`python -m app.ops.cluster start|stop`: minter, two edges, Redis and nginx on one machine.

Every process runs detached (its own session) with its log in the run directory (`.cluster/`), and
`state.json` there lists what `start` started, so `stop` stops exactly that and nothing else. How each
process is started and waited for is in `app.ops.launchers`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.config import Settings
from app.exceptions import KeySetError, SettingsError
from app.ops.launchers import START_TIMEOUT, start_nginx, start_redis, start_service
from app.ops.processes import STATE, ClusterError, State, alive, free_port, terminate
from app.ops.tls import make_certificates
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE

EDGES = ("edge-1", "edge-2")


def start(
    directory: Path,
    *,
    port: int,
    keys_dir: Path,
    own_redis: bool,
    replay_url: str | None = None,
    tls: bool = False,
) -> State:
    """Start the fleet in `directory` and return its state; on failure stop what was started.

    The replay store is `replay_url` when given (and not `own_redis`), else a redis-server of the
    cluster's own with append-only persistence: never someone else's database.
    """
    directory = directory.resolve()
    keys_dir = keys_dir.resolve()
    old = State.load(directory)
    if old is not None and any(alive(proc.pid, proc.marker) for proc in old.procs):
        raise ClusterError(f"a cluster already runs from {directory}: stop it first (make cluster-stop)")
    directory.mkdir(parents=True, exist_ok=True)
    ensure_keys(keys_dir, now=int(time.time()))
    nginx_port = port or free_port()
    scheme = "https" if tls else "http"
    state = State(str(directory), f"{scheme}://127.0.0.1:{nginx_port}", "", str(keys_dir))
    state.save()
    try:
        certificates = None
        if tls:
            ca, certificate, key = make_certificates(directory)
            state.ca = str(ca)
            certificates = (certificate, key)
        if replay_url and not own_redis:
            state.redis_url = replay_url
        else:
            redis_proc = start_redis(state, free_port())
            state.procs.append(redis_proc)
            state.redis_url = f"redis://127.0.0.1:{redis_proc.port}/0"
        state.save()
        base = {k: v for k, v in os.environ.items() if k not in {"REALTIME_JWKS_URL", "REALTIME_EDGE_NAME"}}
        base.update(REALTIME_KEYS_DIR=str(keys_dir), REALTIME_REPLAY_URL=state.redis_url)
        # The edges verify with the minter's JWKS but open sealed tickets with the seal key file,
        # read where `make rotate` writes it, so a rotation reaches them without a restart.
        base.update(REALTIME_SEAL_KEYS_FILE=str(keys_dir / SEAL_FILE))
        minter = start_service(state, "minter", base)  # the dev route only when REALTIME_DEV asks for it
        jwks_url = f"http://127.0.0.1:{minter.port}/.well-known/jwks.json"
        edges = [
            start_service(state, name, {**base, "REALTIME_JWKS_URL": jwks_url, "REALTIME_EDGE_NAME": name})
            for name in EDGES
        ]
        state.procs.append(
            start_nginx(
                state,
                port=nginx_port,
                minter=minter.port,
                edges=[edge.port for edge in edges],
                tls=certificates,
            )
        )
        state.save()
        nginx = state.procs[-1]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(state.url + "/healthz", timeout=1, verify=_trust(state)).status_code == 200:
                    break
            if time.monotonic() > deadline or not alive(nginx.pid, nginx.marker):
                raise ClusterError(f"nginx does not answer at {state.url}; log {nginx.log}")
            time.sleep(0.05)
    except BaseException:
        stop(directory)
        raise
    return state


def _trust(state: State) -> ssl.SSLContext | bool:
    """What a client of this cluster verifies TLS with: its own CA, when it has TLS."""
    return ssl.create_default_context(cafile=state.ca) if state.ca else True


def stop(directory: Path) -> list[str]:
    """Stop what `start` recorded in `directory` (nginx first, Redis last) and remove the state."""
    directory = directory.resolve()
    state = State.load(directory)
    if state is None:
        return []
    order = {"nginx": 0, "redis": 2}
    stopped = []
    for proc in sorted(state.procs, key=lambda proc: order.get(proc.name, 1)):
        if alive(proc.pid, proc.marker):
            # nginx: SIGQUIT is `nginx -s quit`, a graceful stop; the others drain on SIGTERM.
            terminate(proc, signal.SIGQUIT if proc.name == "nginx" else signal.SIGTERM)
            stopped.append(proc.name)
    (directory / STATE).unlink(missing_ok=True)
    return stopped


def _redacted(url: str) -> str:
    """A Redis URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ops.cluster", description=__doc__)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="run directory (default .cluster)")
    parser.add_argument("--port", type=int, help="nginx port; 0 picks a free one (default: PORT or 8080)")
    parser.add_argument("--keys-dir", type=Path, help="signing keys (default: REALTIME_KEYS_DIR or keys)")
    parser.add_argument(
        "--own-redis", action="store_true", help="start a redis-server even when REALTIME_REPLAY_URL is set"
    )
    parser.add_argument("--tls", action="store_true", help="nginx terminates TLS with a certificate made now")
    args = parser.parse_args(argv)
    try:
        if args.command == "stop":
            stopped = stop(args.dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else f"no cluster running from {args.dir}")
            return 0
        settings = Settings.from_environ(os.environ)
        port = args.port if args.port is not None else int(os.environ.get("PORT", "8080"))
        keys_dir: Path = args.keys_dir or settings.keys_dir
        replay_url = os.environ.get("REALTIME_REPLAY_URL", "").strip() or None
        if replay_url == "memory://":
            raise ClusterError("REALTIME_REPLAY_URL=memory:// cannot be shared by two edges: use redis://")
        state = start(
            args.dir,
            port=port,
            keys_dir=keys_dir,
            own_redis=args.own_redis,
            replay_url=replay_url,
            tls=args.tls,
        )
        api_key, _ = create_key(
            settings.api_keys_file or keys_dir / "api_keys.json",
            project="demo",
            kind="runtime",
            now=int(time.time()),
            label="cluster",
        )
    except (ClusterError, KeySetError, SettingsError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for proc in state.procs:
        print(f"{proc.name:<7} pid {proc.pid:<7} port {proc.port:<6} log {proc.log}")
    print(f"replay store {_redacted(state.redis_url)}; stop with `make cluster-stop`")
    if state.ca:
        print(f"CA certificate {state.ca} (trust it for this cluster: curl --cacert, SSL_CERT_FILE)")
    print(f"CLUSTER_URL={state.url}")
    print(f"CLUSTER_API_KEY={api_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
