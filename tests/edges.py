"""A real edge process for flood tests: its keys, an API key, tickets, raw and WebSocket clients."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.rawsocket import RawClient
from tests.servers import ServiceProcess

MIB = 1 << 20
TEXT_ONLY = {"model": "openai/gpt-realtime-2", "modalities": ["text"]}


class Edge:
    def __init__(self, process: ServiceProcess, key: str) -> None:
        self.process, self.key = process, key

    def ticket(self) -> str:
        response = httpx.post(
            self.process.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.key}"},
            json={},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["client_secret"])

    def connect(self) -> ClientConnection:
        return connect(
            self.process.ws_url,
            subprotocols=[f"opper-ticket.{self.ticket()}"],  # type: ignore[list-item]
            open_timeout=10,
            max_size=None,
        )

    def raw(self, *, receive_buffer: int | None = None) -> RawClient:
        return RawClient(self.process.port, self.ticket(), receive_buffer=receive_buffer)

    def rss(self) -> int:
        """The edge process's resident memory, in bytes."""
        assert self.process.process is not None
        status = Path(f"/proc/{self.process.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match
        return int(match.group(1)) * 1024


@contextmanager
def edge(tmp_path: Path, **env: str) -> Iterator[Edge]:
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    key, _ = create_key(
        keys_dir / "api_keys.json", project="proj_abuse", kind="runtime", now=int(time.time())
    )
    process = ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys_dir), **env}, log_path=tmp_path / "edge.log")
    with process:
        yield Edge(process, key)
    log = process.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def started(ws: ClientConnection, config: dict[str, Any] | None = None) -> None:
    ws.send(json.dumps({"type": "session.start", "config": config or TEXT_ONLY}))
    assert json.loads(ws.recv(timeout=10))["type"] == "session.started"
