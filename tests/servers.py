"""Real service processes for tests: `python -m app.serve` on port 0, its log captured to a file."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")


def terminate(process: subprocess.Popen[bytes] | None, *, timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL: the process has exited when this returns."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class ServiceProcess:
    """One uvicorn process of the service. Use as a context manager; `url` and `ws_url` once started."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        log_path: Path,
        start_timeout: float = 30.0,
        wrapper: Sequence[str] = (),
        args: tuple[str, ...] = (),
        nofile: int | None = None,
    ) -> None:
        """`args` go to `python -m app.serve`; `nofile` sets the process's soft descriptor limit."""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
        self.env.update(env)
        self.wrapper = tuple(wrapper)  # e.g. ("faketime", "-f", "-8s"): runs the service under it
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.args = args  # more `python -m app.serve` options, e.g. ("--workers", "2")
        self.nofile = nofile
        self.port = 0
        self.ready_at = 0.0  # time.time() once it answered: it started before this
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v3/realtime"

    def start(self) -> ServiceProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        nofile = self.nofile

        def limit_descriptors() -> None:
            if nofile is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.process = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "app.serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *self.args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_descriptors if nofile is not None else None,
            # A wrapper such as faketime forks the service instead of exec'ing it: a group of its own
            # lets stop() reach the service too.
            start_new_session=bool(self.wrapper),
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log()[offset:])
            if match:
                self.port = int(match.group(1))
                try:
                    self._wait_ready(deadline)
                except RuntimeError:
                    self.stop()
                    raise
                self.ready_at = time.time()
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"service did not start within {self.start_timeout}s:\n{self.log()}")

    def wait_out_start_window(self, leeway: int = 5) -> None:
        """Let pass the seconds in which a fresh `memory://` process refuses tickets it did not mint.

        It started before `ready_at` and admits any other minter's `iat` from `floor(start) +
        leeway + 1` on (docs/decisions.md). Letting wall-clock time pass is the point here.
        """
        time.sleep(max(0.0, int(self.ready_at) + leeway + 1 - time.time()))

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/.well-known/jwks.json", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"service never answered:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def settled_log(self, timeout: float = 30.0) -> str:
        """The log once every line the service logged before this call is in the file.

        The service writes its lines from a thread of its own, a moment after logging them, and in
        order: a request carrying a mark of its own is logged after every line logged before this
        call, so once its access line is in the file, so are they. Needs access lines (INFO).
        """
        mark = f"/healthz?settled={uuid.uuid4().hex}"
        httpx.get(self.url + mark, timeout=timeout)
        deadline = time.monotonic() + timeout
        while mark not in (log := self.log()):
            assert time.monotonic() < deadline, f"the service never logged {mark}"
            time.sleep(0.02)
        return log

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.wrapper and self.process is not None and self.process.poll() is None:
            group = self.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _live_members(group) and time.monotonic() < deadline:
                self.process.poll()
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        terminate(self.process, timeout=20)

    def __enter__(self) -> ServiceProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _live_members(group: int) -> bool:
    """Whether a process of this group is still running (zombies, which nobody may reap, are not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def faketime(offset: str) -> tuple[str, ...]:
    """Run a process with its wall clock shifted by `offset` (monotonic time left alone)."""
    binary = shutil.which("faketime")
    if binary is None:
        message = "faketime is not installed (apt-get install -y faketime)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return (binary, "-f", offset)
