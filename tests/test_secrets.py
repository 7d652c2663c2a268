"""Configured secrets redacted by their literal values: provider keys whatever their shape, the relay's
key and the seal keys, in log lines at every level (debug headers included), error events,
`session.terminating` messages and close reasons."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

from app import logs, redaction
from app.config import Settings
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE
from tests.fake_providers import FakeProvider
from tests.servers import ServiceProcess

# Keys with no shape a pattern could know (no sk-, xai-, AIza): only their configured value finds them.
OPENAI_KEY = "qz7PlainOpenaiKeyNoShape0042"
GEMINI_KEY = "Wm3PlainGeminiKeyNoShape0077"
RELAY_KEY = "Hk5PlainRelayKeyNoShape00913"
Event = dict[str, Any]


# The redaction function ---------------------------------------------------------------------


def test_a_configured_secret_is_redacted_whatever_its_shape() -> None:
    redaction.add_secrets([OPENAI_KEY, "", None, "short"])
    assert OPENAI_KEY not in redaction.redact(f"> x-goog-api-key: {OPENAI_KEY}")
    assert redaction.redact(f"> x-goog-api-key: {OPENAI_KEY}") == "> x-goog-api-key: [redacted]"
    assert redaction.redact_secrets(f'{{"message": "the key {OPENAI_KEY} is wrong"}}') == (
        '{"message": "the key [redacted] is wrong"}'
    )
    # Too short to be a key: redacting it would cut words out of every line.
    assert redaction.redact("a short line") == "a short line"


def test_settings_name_every_configured_secret() -> None:
    settings = Settings(
        openai_api_key="o" * 20,
        xai_api_key="x" * 20,
        gemini_api_key="g" * 20,
        upstream_api_key="u" * 20,
        upstream="relay",
        upstream_url="ws://127.0.0.1:1/",
    )
    assert sorted(settings.secrets()) == sorted(["o" * 20, "x" * 20, "g" * 20, "u" * 20])
    assert Settings().secrets() == ()


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_the_log_filter_redacts_secrets_at_every_level(level: int) -> None:
    redaction.add_secrets([GEMINI_KEY])
    record = logging.LogRecord(
        "websockets.client", level, __file__, 1, "> %s: %s", ("x-goog-api-key", GEMINI_KEY), None
    )
    assert logs.RedactSecrets().filter(record)
    assert record.getMessage() == "> x-goog-api-key: [redacted]"


def test_seal_keys_are_redacted_once_loaded(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=int(time.time()))
    seal = json.loads((tmp_path / SEAL_FILE).read_text())
    values = [entry["k"] for entry in seal["keys"]]
    assert values
    from app.tickets.keysource import SealKeySource

    SealKeySource(tmp_path / SEAL_FILE).load()
    for value in values:
        assert value not in redaction.redact(f"loaded {value}")


# A real process ----------------------------------------------------------------------------


class RelayTarget:
    """A WebSocket backend speaking this protocol that puts its caller's key in what it says back:
    an `error`, a `session.terminating` (code and message) and its close reason."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.authorizations: list[str | None] = []
        self._server: Server = serve(self._handle, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/"

    def __enter__(self) -> RelayTarget:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(10)

    def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        self.authorizations.append(connection.request.headers.get("Authorization"))
        try:
            for frame in connection:
                event = json.loads(frame)
                if event["type"] == "session.start":
                    connection.send(json.dumps({"type": "session.started", "session_id": "sess_relay"}))
                elif event["type"] == "text.input" and event["text"] == "error":
                    message = f"the key {self.key} is not allowed here"
                    connection.send(json.dumps({"type": "error", "error": {"code": "x", "message": message}}))
                elif event["type"] == "text.input" and event["text"] == "delta":
                    connection.send(json.dumps({"type": "text.delta", "delta": f"your key: {self.key}"}))
                elif event["type"] == "text.input" and event["text"] == "terminate":
                    error = {"code": f"refused_{self.key}", "message": f"{self.key} was refused"}
                    connection.send(json.dumps({"type": "session.terminating", "error": error}))
                    connection.close(1011, f"bye {self.key}")
                    return
        except ConnectionClosed:
            return


def service(tmp_path: Path, **env: str) -> tuple[ServiceProcess, str]:
    keys = tmp_path / "keys"
    ensure_keys(keys, now=int(time.time()) - 60)
    key, _ = create_key(keys / "api_keys.json", project="acme", kind="runtime", now=int(time.time()))
    process = ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys), **env},
        log_path=tmp_path / "service.log",
        args=("--log-level", "debug"),
    )
    return process, key


@contextmanager
def opened(process: ServiceProcess, key: str) -> Iterator[ClientConnection]:
    with connect(
        process.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10
    ) as ws:
        ws.send(json.dumps({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}))
        yield ws


def frames_until(ws: ClientConnection, last: str) -> list[str]:
    """Every frame up to one whose type is `last` (or the close)."""
    frames: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            frame = ws.recv(timeout=30)
        except ConnectionClosed:
            return frames
        assert isinstance(frame, str)
        frames.append(frame)
        if json.loads(frame)["type"] == last:
            return frames
    raise AssertionError(f"no {last} within 30 s: {frames}")


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[tuple[ServiceProcess, str, RelayTarget]]:
    with RelayTarget(RELAY_KEY) as target:
        process, key = service(
            tmp_path,
            REALTIME_UPSTREAM="relay",
            REALTIME_UPSTREAM_URL=target.url,
            REALTIME_UPSTREAM_API_KEY=RELAY_KEY,
        )
        with process:
            yield process, key, target


def test_the_relay_key_never_reaches_the_browser_or_the_debug_log(
    relayed: tuple[ServiceProcess, str, RelayTarget],
) -> None:
    process, key, target = relayed
    with opened(process, key) as ws:
        seen = frames_until(ws, "session.started")
        for text, last in (("error", "error"), ("delta", "text.delta"), ("terminate", "session.terminating")):
            ws.send(json.dumps({"type": "text.input", "text": text}))
            seen += frames_until(ws, last)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert target.authorizations == [f"Bearer {RELAY_KEY}"]  # the key was used, so it was there to leak
    kinds = [json.loads(frame)["type"] for frame in seen]
    assert kinds == ["session.started", "error", "text.delta", "session.terminating"]
    terminating = json.loads(seen[-1])["error"]
    assert terminating == {"code": "refused_[redacted]", "message": "[redacted] was refused"}
    assert json.loads(seen[1])["error"]["message"] == "the key [redacted] is not allowed here"
    assert closed.value.rcvd is not None and RELAY_KEY not in closed.value.rcvd.reason
    assert not any(RELAY_KEY in frame for frame in seen)
    log = process.settled_log()
    assert "DEBUG" in log  # debug lines were written, headers among them
    assert RELAY_KEY not in log


class KeyQuotingProvider(FakeProvider):
    """The fake OpenAI, also closing its socket with a reason that quotes the key."""

    async def _openai_respond(self, connection: Any, state: dict[str, Any]) -> bool:
        what, text = state["pending"] or ("text", "")
        if "close quoting the key" in text:
            await connection.close(1011, f"bad key {self.key}")
            return False
        return await super()._openai_respond(connection, state)


def test_provider_keys_without_a_shape_never_reach_the_browser_or_the_debug_log(tmp_path: Path) -> None:
    with (
        KeyQuotingProvider("openai", key=OPENAI_KEY) as openai,
        FakeProvider("gemini", key=GEMINI_KEY) as gemini,
    ):
        process, key = service(
            tmp_path,
            REALTIME_UPSTREAM="providers",
            REALTIME_OPENAI_API_KEY=OPENAI_KEY,
            REALTIME_OPENAI_URL=openai.url,
            REALTIME_GEMINI_API_KEY=GEMINI_KEY,
            REALTIME_GEMINI_URL=gemini.url,
        )
        with process:
            with opened(process, key) as ws:
                seen = frames_until(ws, "session.started")
                ws.send(json.dumps({"type": "text.input", "text": "provoke error"}))
                ws.send(json.dumps({"type": "response.create"}))
                seen += frames_until(ws, "error")
                ws.send(json.dumps({"type": "text.input", "text": "close quoting the key"}))
                ws.send(json.dumps({"type": "response.create"}))
                seen += frames_until(ws, "session.terminating")
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
            with connect(
                process.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10
            ) as ws:
                model = "gemini/gemini-3.1-flash-live-preview"
                ws.send(json.dumps({"type": "session.start", "config": {"model": model}}))
                seen += frames_until(ws, "session.started")
            log = process.settled_log()
    assert openai.headers and gemini.headers  # both keys were sent, so both were there to leak
    kinds = [json.loads(frame)["type"] for frame in seen]
    assert "error" in kinds and "session.terminating" in kinds and kinds.count("session.started") == 2
    assert closed.value.rcvd is not None and OPENAI_KEY not in closed.value.rcvd.reason
    for secret in (OPENAI_KEY, GEMINI_KEY):
        assert not any(secret in frame for frame in seen), secret
        assert secret not in log, secret
    # websockets prints the headers it sends at debug: the Gemini key's line is there, without the key.
    assert "websockets.client: > x-goog-api-key: [redacted]" in log
