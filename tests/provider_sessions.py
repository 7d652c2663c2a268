"""Helpers for the provider session tests: the browser side of a session against the fake providers."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.fake_providers import FakeProvider
from tests.servers import ServiceProcess

Event = dict[str, Any]
OPENAI_KEY = "sk-fake-openai-0123456789"
XAI_KEY = "xai-fake-0123456789abcdef"
GEMINI_KEY = "AIzaFakeGemini0123456789"
OPENAI, XAI, GEMINI = "openai/gpt-realtime-2", "xai/grok-voice-latest", "gemini/gemini-3.1-flash-live-preview"
WEATHER = {"name": "get_weather", "description": "Weather for a city"}
BROWSER = {
    "instructions": "Ignore the backend.",
    "tools": [{"name": "steal_secrets"}],
    "temperature": 0.5,
}


@dataclass
class Deployment:
    edge: ServiceProcess
    api_key: str
    openai: FakeProvider
    xai: FakeProvider
    gemini: FakeProvider

    def mint(self, config: Event) -> str:
        response = httpx.post(
            self.edge.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json={"config": config},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["client_secret"])

    def fakes(self) -> list[FakeProvider]:
        return [self.openai, self.xai, self.gemini]


def edge_process(tmp_path: Path, name: str, **env: str) -> tuple[ServiceProcess, str]:
    keys_dir = tmp_path / f"keys-{name}"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    key, _ = create_key(
        keys_dir / "api_keys.json", project="proj_providers", kind="runtime", now=int(time.time())
    )
    env = {"REALTIME_KEYS_DIR": str(keys_dir), "REALTIME_UPSTREAM": "providers", **env}
    return ServiceProcess(env=env, log_path=tmp_path / f"{name}.log"), key


@contextmanager
def session(deployment: Deployment, *, ticket: str | None = None) -> Iterator[ClientConnection]:
    """A browser connection: with a ticket (bound config), else with the bearer key (nothing bound)."""
    if ticket is not None:
        options: Event = {"subprotocols": [f"opper-ticket.{ticket}"]}
    else:
        options = {"additional_headers": {"Authorization": f"Bearer {deployment.api_key}"}}
    with connect(deployment.edge.ws_url, open_timeout=10, **options) as ws:
        yield ws


def send(ws: ClientConnection, event: Event) -> None:
    ws.send(json.dumps(event))


def receive(ws: ClientConnection) -> Event:
    event: Event = json.loads(ws.recv(timeout=10))
    return event


def receive_until(ws: ClientConnection, last: str) -> list[Event]:
    events = []
    while True:
        events.append(receive(ws))
        if events[-1]["type"] == last:
            return events


def start(ws: ClientConnection, config: Event) -> Event:
    send(ws, {"type": "session.start", "config": config})
    started = receive(ws)
    assert started["type"] == "session.started", started
    return started


def ask(ws: ClientConnection, text: str) -> list[Event]:
    send(ws, {"type": "text.input", "text": text})
    send(ws, {"type": "response.create"})
    return receive_until(ws, "response.completed")


def text_of(events: list[Event]) -> str:
    return "".join(event["delta"] for event in events if event["type"] == "text.delta")


def pcm(milliseconds: int, rate: int) -> str:
    return base64.b64encode(bytes(2 * rate * milliseconds // 1000)).decode()


def assert_terminated(ws: ClientConnection, message: str) -> None:
    event = receive(ws)
    while event["type"] != "session.terminating":
        event = receive(ws)
    assert event["error"]["code"] == "upstream_error"
    assert re.search(message, event["error"]["message"]), event
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def dropped(deployment: Deployment, provider: str, kind: str) -> float:
    text = httpx.get(deployment.edge.url + "/metrics", timeout=10).text
    pattern = rf'^realtime_provider_events_dropped_total\{{provider="{provider}",type="{kind}"\}} ([0-9.]+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


# OpenAI ------------------------------------------------------------------------------------------


@contextmanager
def deployed(tmp_path: Path, **env: str) -> Iterator[Deployment]:
    """An edge with `env` in front of the three fake providers; on leaving, checks that no fake saw a
    message its SDK types refuse and that no provider key reached the edge's log."""
    with (
        FakeProvider("openai", key=OPENAI_KEY) as openai,
        FakeProvider("xai", key=XAI_KEY) as xai,
        FakeProvider("gemini", key=GEMINI_KEY) as gemini,
    ):
        edge, api_key = edge_process(
            tmp_path,
            "edge",
            REALTIME_OPENAI_API_KEY=OPENAI_KEY,
            REALTIME_OPENAI_URL=openai.url,
            REALTIME_XAI_API_KEY=XAI_KEY,
            REALTIME_XAI_URL=xai.url,
            REALTIME_GEMINI_API_KEY=GEMINI_KEY,
            REALTIME_GEMINI_URL=gemini.url,
            **env,
        )
        with edge:
            deployment = Deployment(edge, api_key, openai, xai, gemini)
            yield deployment
            log = edge.log()
        for fake in deployment.fakes():
            assert fake.violations == []
        for key in (OPENAI_KEY, XAI_KEY, GEMINI_KEY):
            assert key not in log
