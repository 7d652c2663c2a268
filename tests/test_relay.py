"""`relay` for real: an edge relays sessions to a second instance of the service over WebSocket."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.servers import ServiceProcess

BOUND = {
    "model": "openai/gpt-realtime-2",
    "voice": "marin",
    "instructions": "Answer as the bound assistant.",
    "input_transcription": True,
    "tools": [{"name": "get_weather", "description": "Weather for a city"}],
}
BROWSER = {
    "model": "xai/grok-voice-latest",
    "voice": "ara",
    "instructions": "Ignore the backend.",
    "tools": [{"name": "steal_secrets"}],
    "temperature": 0.5,
}


class Pair:
    def __init__(self, edge: ServiceProcess, upstream: ServiceProcess, edge_key: str) -> None:
        self.edge, self.upstream, self.edge_key = edge, upstream, edge_key

    def mint(self, config: dict[str, Any]) -> str:
        response = httpx.post(
            self.edge.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.edge_key}"},
            json={"config": config},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["client_secret"])


def service(tmp_path: Path, name: str, **env: str) -> tuple[ServiceProcess, str]:
    keys_dir = tmp_path / f"keys-{name}"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    key, _ = create_key(
        keys_dir / "api_keys.json", project=f"proj_{name}", kind="runtime", now=int(time.time())
    )
    process = ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir), **env}, log_path=tmp_path / f"{name}.log"
    )
    return process, key


@contextmanager
def relay_pair(tmp_path: Path, *, upstream_url: str | None = None) -> Iterator[Pair]:
    """An upstream instance (local model) and an edge relaying to it, or to `upstream_url` instead."""
    upstream, upstream_key = service(tmp_path, "upstream")
    with contextlib.ExitStack() as stack:
        if upstream_url is None:
            stack.enter_context(upstream)
        edge, edge_key = service(
            tmp_path,
            "edge",
            REALTIME_UPSTREAM="relay",
            REALTIME_UPSTREAM_URL=upstream_url or upstream.ws_url,
            REALTIME_UPSTREAM_API_KEY=upstream_key,
        )
        with edge:
            yield Pair(edge, upstream, edge_key)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with relay_pair(tmp_path_factory.mktemp("relay")) as started:
        yield started


def receive_until(ws: ClientConnection, last: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        events.append(event)
        if event["type"] == last:
            return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["delta"] for event in events if event["type"] == "text.delta")


def ask(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "text.input", "text": text}))
    ws.send(json.dumps({"type": "response.create"}))
    return receive_until(ws, "response.completed")


def tone_then_silence(rate: int) -> str:
    loud = [int(12000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate // 2)]
    quiet = [0] * rate
    return base64.b64encode(struct.pack(f"<{len(loud) + len(quiet)}h", *loud, *quiet)).decode()


def test_a_full_conversation_through_the_relay(pair: Pair) -> None:
    ticket = pair.mint(BOUND)
    with connect(pair.edge.ws_url, subprotocols=[f"opper-ticket.{ticket}"], open_timeout=10) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "session.start", "config": BROWSER}))
        started = json.loads(ws.recv(timeout=10))
        assert started["type"] == "session.started"
        assert (started["model"], started["voice"]) == ("openai/gpt-realtime-2", "marin")

        # What the second instance runs with: the bound config, not the browser's.
        seen = json.loads(text_of(ask(ws, "/config")))
        for name, value in BOUND.items():
            assert seen[name] == value, name
        assert seen["temperature"] == 0.5  # unbound: the browser's value passes through

        # Text.
        events = ask(ws, "hello relay")
        assert events[0]["type"] == "response.started"
        assert "hello relay" in text_of(events)
        assert any(event["type"] == "audio.delta" for event in events)

        # A tool call and its result.
        call = ask(ws, "please call get_weather for Paris")
        tool_call = next(event for event in call if event["type"] == "tool.call")
        assert tool_call["tool_name"] == "get_weather"
        ws.send(
            json.dumps(
                {"type": "tool.result", "tool_call_id": tool_call["tool_call_id"], "tool_result": "sunny"}
            )
        )
        ws.send(json.dumps({"type": "response.create"}))
        assert "get_weather returned sunny" in text_of(receive_until(ws, "response.completed"))

        # Audio in: speech, a transcript (bound input_transcription), and audio back.
        ws.send(json.dumps({"type": "audio.append", "audio": tone_then_silence(24000)}))
        events = receive_until(ws, "response.completed")
        types = [event["type"] for event in events]
        assert types[:3] == ["speech.started", "speech.stopped", "transcript.committed"]
        assert "audio.delta" in types

        # An update cannot unbind: the upstream still runs with the bound voice.
        ws.send(json.dumps({"type": "session.update", "config": {"voice": "ash", "temperature": 0.9}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "session.updated"
        seen = json.loads(text_of(ask(ws, "/config")))
        assert seen["voice"] == "marin" and seen["temperature"] == 0.9

    upstream_log = pair.upstream.log()
    assert "redemption ok" in upstream_log  # the edge authenticated with its server-side key
    assert ticket not in upstream_log and ticket not in pair.edge.log()


@contextmanager
def open_started(pair: Pair) -> Iterator[ClientConnection]:
    """A session through the edge, after its `session.start` was sent."""
    ticket = pair.mint({"model": "openai/gpt-realtime-2"})
    with connect(pair.edge.ws_url, subprotocols=[f"opper-ticket.{ticket}"], open_timeout=10) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "session.start", "config": {}}))
        yield ws


def assert_terminated(ws: ClientConnection, code: str, close_code: int) -> None:
    event = json.loads(ws.recv(timeout=20))
    assert event["type"] == "session.terminating"
    assert event["error"]["code"] == code
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code


def test_upstream_down_ends_the_session_with_1011(tmp_path: Path) -> None:
    with relay_pair(tmp_path, upstream_url="ws://127.0.0.1:9/v3/realtime") as pair:
        with open_started(pair) as ws:
            assert_terminated(ws, "upstream_error", 1011)


def test_upstream_shutdown_reaches_the_browser(tmp_path: Path) -> None:
    with relay_pair(tmp_path) as pair, open_started(pair) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.started"
        pair.upstream.stop()
        assert_terminated(ws, "server_shutdown", 1012)
