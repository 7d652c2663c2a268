"""Detached processes recorded in a run directory's `state.json`, so that exactly they are stopped.

Used by `python -m app.ops.cluster`: each process runs in its own session with its log in the run
directory; a process is signalled only while its pid still runs the command line it was started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
STATE = "state.json"
STOP_TIMEOUT = 25.0  # an edge drains its sessions for up to 10 s, then uvicorn finishes


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
    ca: str = ""  # the CA certificate of a TLS cluster
    procs: list[Proc] = field(default_factory=list)

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


def spawn(argv: list[str], *, log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
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


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def terminate(proc: Proc, sig: signal.Signals) -> None:
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
