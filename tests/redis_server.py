"""A private `redis-server` for tests: free port, no persistence, stoppable and restartable in place."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

from app.ops.processes import free_port
from tests.servers import terminate

REDIS_SERVER = "redis-server"


class RedisServer:
    """One `redis-server` process on a fixed port; `stop()` then `start()` brings it back on that port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"redis-{self.port}-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        """A synchronous client with short timeouts; the caller closes it."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> RedisServer:
        """Start the server (again) on `self.port` and wait until it answers PING."""
        if self.running:
            return self
        executable = shutil.which(REDIS_SERVER)
        if executable is None:
            raise RuntimeError(f"{REDIS_SERVER} is not installed")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_path.parent),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode} on port {self.port}:\n"
                        f"{self.log()}"
                    )
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {self.start_timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM, and wait until the process has exited (its port is then closed)."""
        terminate(self.process, timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_cluster(directory: Path, *, shards: int = 2, start_timeout: float = 20.0) -> list[RedisServer]:
    """A Redis Cluster of `shards` primaries (no replicas), the slots split evenly; stop each to end it."""
    nodes: list[RedisServer] = []
    try:
        bus_ports = [free_port() for _ in range(shards)]
        for index in range(shards):
            port = free_port()
            nodes.append(
                RedisServer(
                    port=port,
                    log_path=directory / f"redis-cluster-{index}.log",
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-port",  # else port + 10000, which may be taken or over 65535
                        str(bus_ports[index]),
                    ),
                ).start()
            )
        clients = [node.client() for node in nodes]
        try:
            per_shard = 16384 // shards
            for index, client in enumerate(clients):
                last = 16383 if index == shards - 1 else (index + 1) * per_shard - 1
                _command(client, "CLUSTER ADDSLOTS", *range(index * per_shard, last + 1))
            for node, bus_port in zip(nodes[1:], bus_ports[1:], strict=True):
                _command(clients[0], "CLUSTER MEET", "127.0.0.1", node.port, bus_port)
            deadline = time.monotonic() + start_timeout
            while not all(
                _cluster_state(client) == "ok" and len(_command(client, "CLUSTER NODES")) == shards
                for client in clients
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not form within {start_timeout}s")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def _command(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _cluster_state(client: redis.Redis) -> str:
    info = _command(client, "CLUSTER INFO")
    state = info.get("cluster_state") or info.get(b"cluster_state") or b""
    return state.decode() if isinstance(state, bytes) else str(state)


def require_redis_server() -> None:
    """Skip (with the reason printed) when `redis-server` is missing; under CI, fail instead."""
    if shutil.which(REDIS_SERVER) is not None:
        return
    reason = f"{REDIS_SERVER} is not installed (apt-get install redis-server)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    print(f"skipping: {reason}")
    pytest.skip(reason)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh private redis-server for one test, stopped afterwards."""
    require_redis_server()
    with RedisServer(log_path=tmp_path / "redis.log") as server:
        yield server
