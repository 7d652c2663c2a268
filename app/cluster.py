"""`python -m app.cluster start|stop`: minter, two edges, Redis and nginx on one machine (SPEC section 9).

Every process runs detached (its own session) with its log in the run directory (`.cluster/`), and
`state.json` there lists what `start` started, so `stop` stops exactly that and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from app.apikeys import create_key
from app.config import Settings
from app.exceptions import KeySetError, SettingsError
from app.rotation import ensure_keys

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
STATE = "state.json"
EDGES = ("edge-1", "edge-2")
SHARED_REDIS = ("127.0.0.1", 6379)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0  # an edge drains its sessions for up to 10 s, then uvicorn finishes
_LISTENING = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")


class ClusterError(Exception):
    """A cluster process failed to start or stop; the message says which and where its log is."""


@dataclass
class Proc:
    """One process the cluster started."""

    name: str
    pid: int
    port: int
    log: str
    marker: str  # a word of its command line, so a reused pid is never signalled
    argv: list[str] = field(default_factory=list)  # how it was started, to restart it by hand


@dataclass
class State:
    """What `start` started, written to `state.json`."""

    dir: str
    url: str
    redis_url: str
    keys_dir: str
    nginx_conf: str = ""
    procs: list[Proc] = field(default_factory=list)

    def find(self, name: str) -> Proc | None:
        return next((proc for proc in self.procs if proc.name == name), None)

    def save(self) -> None:
        path = Path(self.dir) / STATE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> State | None:
        try:
            data: dict[str, Any] = json.loads((directory / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        procs = [Proc(**entry) for entry in data.pop("procs", [])]
        return cls(**data, procs=procs)


def free_port() -> int:
    """A port nothing listens on now (for nginx and redis-server, which cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int, marker: str) -> bool:
    """True while `pid` runs and is still the process we started (not a zombie, not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"} and marker in cmdline


def _spawn(argv: list[str], *, log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - fixed argv built here, no shell
            argv,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{log.stem} exited with {proc.returncode}; its log {log}:\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise ClusterError(f"{url} was not ready within {START_TIMEOUT}s; log {log}:\n{_tail(log)}")


def _serve(state: State, name: str, env: Mapping[str, str]) -> Proc:
    """Start `python -m app.serve` on a free port and wait until `/readyz` says ok."""
    log = Path(state.dir) / f"{name}.log"
    argv = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", "0"]
    offset = log.stat().st_size if log.exists() else 0  # logs append across runs: read only this one
    proc = _spawn(argv, log=log, env=env)
    entry = Proc(name, proc.pid, 0, str(log), "app.serve", argv)
    state.procs.append(entry)
    state.save()
    deadline = time.monotonic() + START_TIMEOUT
    while not entry.port:
        with log.open("rb") as handle:
            handle.seek(offset)
            match = _LISTENING.search(handle.read().decode(errors="replace"))
        if match:
            entry.port = int(match.group(1))
        elif proc.poll() is not None or time.monotonic() > deadline:
            raise ClusterError(f"{name} did not start; its log {log}:\n{_tail(log)}")
        else:
            time.sleep(0.05)
    state.save()
    _wait_ready(f"http://127.0.0.1:{entry.port}/readyz", proc, log, deadline)
    return entry


def _redis_answers(host: str, port: int) -> bool:
    client = redis.Redis(host=host, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(state: State, port: int) -> Proc:
    """Our own redis-server on `port`, persisting with an fsync'd append-only file in the run dir.

    Persistence matters: a Redis that forgets used ticket ids on restart would let them be replayed.
    """
    directory = Path(state.dir)
    log = directory / "redis.log"
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]
    proc = _spawn(argv, log=log, env=os.environ)
    deadline = time.monotonic() + START_TIMEOUT
    while not _redis_answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ClusterError(f"redis-server did not start; its log {log}:\n{_tail(log)}")
        time.sleep(0.05)
    return Proc("redis", proc.pid, port, str(log), "redis-server", argv)


def nginx_config(directory: Path, *, port: int, minter: int, edges: Sequence[int]) -> str:
    """nginx in front: the WebSocket path balanced over the edges, everything else to the minter."""
    edge_lines = "\n".join(f"        server 127.0.0.1:{edge} max_fails=1 fail_timeout=5s;" for edge in edges)
    temp = directory / "nginx-temp"
    return f"""# Generated by `python -m app.cluster start`; rewritten on every start.
daemon on;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
# `crit`: nginx's error lines quote the request line, and a `?ticket=` query is a secret.
error_log {directory}/nginx-error.log crit;
# Workers still holding WebSockets after `nginx -s quit` are closed after this long.
worker_shutdown_timeout 10s;
events {{ worker_connections 1024; }}
http {{
    # $uri, not $request: the query string may carry a ticket (SPEC section 5).
    log_format realtime '$remote_addr [$time_local] "$request_method $uri" $status '
                        'upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';
    access_log {directory}/nginx-access.log realtime;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    # Bodies and responses stay in memory: nginx's workers (often `nobody`) may not reach the run dir.
    client_max_body_size 128k;
    client_body_buffer_size 128k;
    proxy_max_temp_file_size 0;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream minter {{
        server 127.0.0.1:{minter};
    }}
    upstream edges {{
{edge_lines}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_connect_timeout 2s;

        location = /v3/realtime {{
            proxy_pass http://edges;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
            # A refused connection (edge down or draining) is retried on the other edge.
            proxy_next_upstream error timeout;
        }}
        location / {{
            proxy_pass http://minter;
        }}
    }}
}}
"""


def _ensure_nginx() -> str:
    if not Path(NGINX).exists():
        print("nginx is missing: installing nginx-light", file=sys.stderr)
        install = ["apt-get", "install", "-y", "nginx-light"]
        if subprocess.run(install, check=False).returncode != 0:  # noqa: S603
            subprocess.run(["apt-get", "update"], check=True)  # noqa: S603, S607
            subprocess.run(install, check=True)  # noqa: S603
    return NGINX


def start_nginx(state: State, *, port: int, minter: int, edges: Sequence[int]) -> Proc:
    directory = Path(state.dir)
    binary = _ensure_nginx()
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "nginx-temp" / name).mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_config(directory, port=port, minter=minter, edges=edges), encoding="utf-8")
    state.nginx_conf = str(conf)
    log = directory / "nginx.log"
    argv = [binary, "-p", str(directory), "-e", str(directory / "nginx-error.log"), "-c", str(conf)]
    pid_file = directory / "nginx.pid"
    pid_file.unlink(missing_ok=True)  # a stale one (nginx killed) would name the wrong process
    with log.open("ab") as out:
        # `daemon on`: this returns once the master has forked away; the master writes the pid file.
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if result.returncode != 0:
        raise ClusterError(f"nginx did not start (exit {result.returncode}); log {log}:\n{_tail(log)}")
    deadline = time.monotonic() + START_TIMEOUT
    while not pid_file.exists() or not pid_file.read_text().strip():
        if time.monotonic() > deadline:
            raise ClusterError(f"nginx wrote no pid file {pid_file}; log {log}:\n{_tail(log)}")
        time.sleep(0.02)
    return Proc("nginx", int(pid_file.read_text().strip()), port, str(log), "nginx", argv)


def start(directory: Path, *, port: int, keys_dir: Path, own_redis: bool) -> State:
    """Start the fleet in `directory` and return its state; on failure stop what was started."""
    directory = directory.resolve()
    keys_dir = keys_dir.resolve()
    old = State.load(directory)
    if old is not None and any(alive(proc.pid, proc.marker) for proc in old.procs):
        raise ClusterError(f"a cluster already runs from {directory}: stop it first (make cluster-stop)")
    directory.mkdir(parents=True, exist_ok=True)
    ensure_keys(keys_dir, now=int(time.time()))
    nginx_port = port or free_port()
    state = State(str(directory), f"http://127.0.0.1:{nginx_port}", "", str(keys_dir))
    state.save()
    try:
        if not own_redis and _redis_answers(*SHARED_REDIS):
            state.redis_url = "redis://{}:{}/0".format(*SHARED_REDIS)
        else:
            redis_proc = start_redis(state, free_port())
            state.procs.append(redis_proc)
            state.redis_url = f"redis://127.0.0.1:{redis_proc.port}/0"
        state.save()
        base = {k: v for k, v in os.environ.items() if k not in {"REALTIME_JWKS_URL", "REALTIME_EDGE_NAME"}}
        base.update(REALTIME_KEYS_DIR=str(keys_dir), REALTIME_REPLAY_URL=state.redis_url)
        minter = _serve(state, "minter", {**base, "REALTIME_DEV": "true"})
        jwks_url = f"http://127.0.0.1:{minter.port}/.well-known/jwks.json"
        edges = [
            _serve(state, name, {**base, "REALTIME_JWKS_URL": jwks_url, "REALTIME_EDGE_NAME": name})
            for name in EDGES
        ]
        state.procs.append(
            start_nginx(state, port=nginx_port, minter=minter.port, edges=[edge.port for edge in edges])
        )
        state.save()
        nginx = state.procs[-1]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(state.url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or not alive(nginx.pid, nginx.marker):
                raise ClusterError(f"nginx does not answer at {state.url}; log {nginx.log}")
            time.sleep(0.05)
    except BaseException:
        stop(directory)
        raise
    return state


def _terminate(proc: Proc, sig: signal.Signals) -> None:
    if not alive(proc.pid, proc.marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(proc.pid, proc.marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(proc.pid, proc.marker):
        print(f"{proc.name} (pid {proc.pid}) ignored {sig.name}; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


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
            _terminate(proc, signal.SIGQUIT if proc.name == "nginx" else signal.SIGTERM)
            stopped.append(proc.name)
    (directory / STATE).unlink(missing_ok=True)
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cluster", description=__doc__)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="run directory (default .cluster)")
    parser.add_argument("--port", type=int, help="nginx port; 0 picks a free one (default: PORT or 8080)")
    parser.add_argument("--keys-dir", type=Path, help="signing keys (default: REALTIME_KEYS_DIR or keys)")
    parser.add_argument(
        "--own-redis", action="store_true", help="start a redis-server even when 127.0.0.1:6379 answers"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "stop":
            stopped = stop(args.dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else f"no cluster running from {args.dir}")
            return 0
        settings = Settings.from_environ(os.environ)
        port = args.port if args.port is not None else int(os.environ.get("PORT", "8080"))
        keys_dir: Path = args.keys_dir or settings.keys_dir
        state = start(args.dir, port=port, keys_dir=keys_dir, own_redis=args.own_redis)
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
    print(f"replay store {state.redis_url}; stop with `make cluster-stop`")
    print(f"CLUSTER_URL={state.url}")
    print(f"CLUSTER_API_KEY={api_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
