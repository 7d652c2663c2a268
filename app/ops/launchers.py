"""How each process of a cluster starts: the service on a free port, a persistent Redis, nginx.

Each is started detached (`app.ops.processes.spawn`), with its log in the run directory, and waited for
until it answers, for at most START_TIMEOUT seconds; `app.ops.cluster` records them and stops them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import redis

from app.ops import nginx
from app.ops.processes import ClusterError, Proc, State, spawn, tail

START_TIMEOUT = 30.0
_LISTENING = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{log.stem} exited with {proc.returncode}; its log {log}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise ClusterError(f"{url} was not ready within {START_TIMEOUT}s; log {log}:\n{tail(log)}")


def start_service(state: State, name: str, env: Mapping[str, str]) -> Proc:
    """Start `python -m app.serve` on a free port and wait until `/readyz` says ok."""
    log = Path(state.dir) / f"{name}.log"
    argv = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", "0"]
    offset = log.stat().st_size if log.exists() else 0  # logs append across runs: read only this one
    proc = spawn(argv, log=log, env=env)
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
            raise ClusterError(f"{name} did not start; its log {log}:\n{tail(log)}")
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
    proc = spawn(argv, log=log, env=os.environ)
    deadline = time.monotonic() + START_TIMEOUT
    while not _redis_answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ClusterError(f"redis-server did not start; its log {log}:\n{tail(log)}")
        time.sleep(0.05)
    return Proc("redis", proc.pid, port, str(log), "redis-server", argv)


def start_nginx(
    state: State, *, port: int, minter: int, edges: Sequence[int], tls: tuple[Path, Path] | None = None
) -> Proc:
    directory = Path(state.dir)
    binary = nginx.ensure_installed()
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "nginx-temp" / name).mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    text = nginx.config(directory, port=port, minter=minter, edges=edges, tls=tls)
    conf.write_text(text, encoding="utf-8")
    state.nginx_conf = str(conf)
    log = directory / "nginx.log"
    argv = [binary, "-p", str(directory), "-e", str(directory / "nginx-error.log"), "-c", str(conf)]
    pid_file = directory / "nginx.pid"
    pid_file.unlink(missing_ok=True)  # a stale one (nginx killed) would name the wrong process
    with log.open("ab") as out:
        # `daemon on`: this returns once the master has forked away; the master writes the pid file.
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if result.returncode != 0:
        raise ClusterError(f"nginx did not start (exit {result.returncode}); log {log}:\n{tail(log)}")
    deadline = time.monotonic() + START_TIMEOUT
    while not pid_file.exists() or not pid_file.read_text().strip():
        if time.monotonic() > deadline:
            raise ClusterError(f"nginx wrote no pid file {pid_file}; log {log}:\n{tail(log)}")
        time.sleep(0.02)
    return Proc("nginx", int(pid_file.read_text().strip()), port, str(log), "nginx", argv)
