"""The session in the app, in-process: the driver over Starlette, a fake clock, the local model.

Every rule of the protocol is tested on the core in tests/test_session.py; these check that the
pieces meet: a few overlay and error cases end to end, the lifecycle, upstream failures, the model.
"""

from __future__ import annotations

import array
import asyncio
import base64
import gc
import json
import math
import re
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from app.clock import FakeClock, SystemClock
from app.config import Settings
from app.edge.services import Services
from app.exceptions import UpstreamError
from app.main import create_app
from app.session.core import SessionCore
from app.session.driver import SessionDriver
from app.session.models import ModelRegistry
from app.session.upstream import SessionInfo
from app.upstreams.audio import windows
from app.upstreams.local import LocalConnection, LocalUpstream
from app.upstreams.turn import HIDDEN, Turn, reply_deltas, reply_words
from tests.polling import poll

Event = dict[str, Any]

OPENAI = "openai/gpt-realtime-2"
XAI = "xai/grok-voice-latest"
GEMINI = "gemini/gemini-3.1-flash-live-preview"
TRANSLATE = "gemini/gemini-3.5-live-translate-preview"


# Helpers -----------------------------------------------------------------------------------


def mint(
    client: TestClient, api_key: str, config: Event | None = None, locked: list[str] | None = None
) -> str:
    body: Event = {}
    if config is not None:
        body["config"] = config
    if locked is not None:
        body["locked_fields"] = locked
    response = client.post("/v3/realtime-sessions", headers={"Authorization": f"Bearer {api_key}"}, json=body)
    assert response.status_code == 200, response.text
    ticket: str = response.json()["client_secret"]
    return ticket


def with_ticket(client: TestClient, ticket: str) -> WebSocketTestSession:
    return client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + ticket])


def with_key(client: TestClient, api_key: str) -> WebSocketTestSession:
    return client.websocket_connect("/v3/realtime", headers={"Authorization": "Bearer " + api_key})


def receive(ws: WebSocketTestSession) -> Event:
    event = ws.receive_json()
    assert isinstance(event, dict)
    return event


def start(ws: WebSocketTestSession, config: Event | None) -> Event:
    ws.send_json({"type": "session.start"} if config is None else {"type": "session.start", "config": config})
    return receive(ws)


def started(ws: WebSocketTestSession, config: Event | None) -> Event:
    event = start(ws, config)
    assert event["type"] == "session.started", event
    return event


def until(ws: WebSocketTestSession, kind: str = "response.completed") -> list[Event]:
    """Every event up to and including the first of type `kind`."""
    events = []
    while True:
        event = receive(ws)
        events.append(event)
        if event["type"] == kind:
            return events


def text_of(events: list[Event]) -> str:
    return "".join(event["delta"] for event in events if event["type"] == "text.delta")


def say(ws: WebSocketTestSession, text: str) -> list[Event]:
    ws.send_json({"type": "text.input", "text": text})
    ws.send_json({"type": "response.create"})
    return until(ws)


def effective(ws: WebSocketTestSession) -> Event:
    """The session's effective config, as the local model reports it for `/config`."""
    config = json.loads(text_of(say(ws, "/config")))
    assert isinstance(config, dict)
    return config


def expect_error(ws: WebSocketTestSession, code: str) -> None:
    event = receive(ws)
    assert event["type"] == "error", event
    assert event["error"]["code"] == code, event
    assert event["error"]["message"]


def update(ws: WebSocketTestSession, config: Event) -> Event:
    ws.send_json({"type": "session.update", "config": config})
    return receive(ws)


def close_code(ws: WebSocketTestSession) -> int:
    """The close code: the very next frame must be the close."""
    with pytest.raises(WebSocketDisconnect) as info:
        ws.receive_json()
    return info.value.code


def terminated(ws: WebSocketTestSession, code: str) -> int:
    """Events up to `session.terminating`, which must carry `code`; returns the close code."""
    event = until(ws, "session.terminating")[-1]
    assert event["error"]["code"] == code, event
    assert event["error"]["message"]
    return close_code(ws)


def waiting(clock: FakeClock) -> None:
    """Until a task of the session waits on `clock` (it runs on the TestClient's event loop thread)."""
    poll(lambda: clock.sleepers >= 1, "a task to wait on the clock", timeout=10, interval=0.001)


def advance(client: TestClient, clock: FakeClock, seconds: float) -> None:
    """Move `clock` on the app's event loop thread, once a task waits on it.

    From the test thread, `FakeClock.advance` could drop a sleeper that the loop adds while it
    rewrites its list of sleepers; on the loop thread the two cannot interleave.
    """
    waiting(clock)
    assert client.portal is not None
    client.portal.call(clock.advance, seconds)


def pcm16(samples: list[float]) -> bytes:
    data = array.array("h", (int(sample * 32767) for sample in samples))
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def loud(rate: int, milliseconds: int) -> bytes:
    count = rate * milliseconds // 1000
    return pcm16([0.5 * math.sin(2 * math.pi * 440 * i / rate) for i in range(count)])


def silence(rate: int, milliseconds: int) -> bytes:
    return bytes(2 * (rate * milliseconds // 1000))


def append(ws: WebSocketTestSession, audio: bytes, chunk_ms: int = 100, rate: int = 24000) -> None:
    step = 2 * rate * chunk_ms // 1000
    for offset in range(0, len(audio), step):
        encoded = base64.b64encode(audio[offset : offset + step]).decode("ascii")
        ws.send_json({"type": "audio.append", "audio": encoded})


@contextmanager
def serve(settings: Settings, clock: FakeClock, **options: Any) -> Iterator[tuple[TestClient, Services]]:
    app: Starlette = create_app(settings, clock=clock, **options)
    with TestClient(app) as client:
        yield client, app.state.services


# 1. Overlay and validation, end to end (every rule is in tests/test_session.py) ----------------

VALID = {"model": OPENAI, "instructions": "Valid."}


def test_bound_and_locked_fields_reach_the_model_through_start_and_update(
    client: TestClient, api_key: str
) -> None:
    tools = [{"name": "lookup", "description": "Find an order"}]
    ticket = mint(
        client, api_key, {"model": OPENAI, "voice": "marin", "tools": tools}, locked=["instructions"]
    )
    expected = {"model": OPENAI, "voice": "marin", "tools": HIDDEN}  # bound tools: set, not shown
    with with_ticket(client, ticket) as ws:
        event = started(ws, {"model": XAI, "voice": "ash", "instructions": "Reveal it.", "temperature": 0.5})
        assert (event["model"], event["voice"]) == (OPENAI, "marin")
        assert effective(ws) == {**expected, "temperature": 0.5}
        change = {"voice": "cedar", "instructions": "Now.", "tools": [{"name": "x"}], "temperature": None}
        assert update(ws, change) == {"type": "session.updated"}
        assert effective(ws) == expected


def test_bound_tools_cannot_be_extended(client: TestClient, api_key: str) -> None:
    tools = [{"name": "lookup", "description": "Find an order"}]
    ticket = mint(client, api_key, {"model": OPENAI, "tools": tools})
    with with_ticket(client, ticket) as ws:
        started(ws, {"model": OPENAI, "tools": [*tools, {"name": "refund"}]})
        assert effective(ws)["tools"] == HIDDEN
        assert update(ws, {"tools": [{"name": "refund"}, *tools]}) == {"type": "session.updated"}
        assert effective(ws)["tools"] == HIDDEN
        # The bound tool is what the model uses.
        assert [event["tool_name"] for event in say(ws, "lookup 42") if event["type"] == "tool.call"] == [
            "lookup"
        ]
        # The browser's tool is not there: naming it gives a plain answer, no tool.call.
        events = say(ws, "please refund me")
        assert [event["type"] for event in events if event["type"] == "tool.call"] == []


def test_bearer_sessions_have_nothing_bound(client: TestClient, api_key: str) -> None:
    config = {"model": XAI, "voice": "eve", "instructions": "Mine.", "output_transcription": True}
    with with_key(client, api_key) as ws:
        event = started(ws, config)
        assert (event["model"], event["voice"]) == (XAI, "eve")
        assert effective(ws) == config
        assert update(ws, {"voice": "rex", "instructions": "Changed."}) == {"type": "session.updated"}
        assert effective(ws) == {**config, "voice": "rex", "instructions": "Changed."}


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"model": OPENAI, "voice": "Puck"}, "unsupported_voice"),
        ({"model": OPENAI, "colour": "blue"}, "invalid_config"),
    ],
)
def test_a_refused_start_can_be_retried(client: TestClient, api_key: str, config: Any, code: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        ws.send_json({"type": "session.start", "config": config})
        expect_error(ws, code)
        started(ws, VALID)
        assert effective(ws) == VALID


def test_a_refused_update_leaves_the_config(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, VALID)
        ws.send_json({"type": "session.update", "config": {"model": XAI}})
        expect_error(ws, "field_not_updatable")
        ws.send_json({"type": "session.start", "config": {"model": XAI}})
        expect_error(ws, "already_started")
        assert effective(ws) == VALID


@pytest.mark.parametrize(
    "frame", ["not json", b"\x00binary", "[" * 100_000], ids=["text", "binary", "nesting"]
)
def test_a_malformed_frame_after_the_start_is_invalid_event(
    client: TestClient, api_key: str, frame: str | bytes
) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, VALID)
        if isinstance(frame, bytes):
            ws.send_bytes(frame)
        else:
            ws.send_text(frame)
        expect_error(ws, "invalid_event")
        assert effective(ws) == VALID


@pytest.mark.parametrize(
    "frame", [json.dumps({"type": "text.input", "text": "hi"}), b"\x00binary"], ids=["text", "binary"]
)
def test_a_first_frame_other_than_start_closes_1008(
    client: TestClient, api_key: str, frame: str | bytes
) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        if isinstance(frame, bytes):
            ws.send_bytes(frame)
        else:
            ws.send_text(frame)
        expect_error(ws, "session_not_started")
        assert close_code(ws) == 1008


@pytest.mark.parametrize(
    ("model", "rates"), [(OPENAI, (24000, 24000)), (XAI, (24000, 24000)), (GEMINI, (16000, 24000))]
)
def test_session_started_reports_the_models_rates(
    client: TestClient, api_key: str, model: str, rates: tuple[int, int]
) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        event = started(ws, {"model": model})
        assert re.fullmatch(r"sess_[0-9a-f]{24}", event["session_id"])
    with with_ticket(client, mint(client, api_key)) as ws:
        assert started(ws, {"model": model})["session_id"] != event["session_id"]
        assert (event["input_sample_rate"], event["output_sample_rate"]) == rates
        assert event["audio_format"] == "pcm16"


# 3. Lifecycle and limits -------------------------------------------------------------------------


def test_no_start_within_the_deadline(client: TestClient, api_key: str, clock: FakeClock) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        advance(client, clock, 10)
        assert terminated(ws, "start_timeout") == 1008


def test_a_failed_start_does_not_extend_the_deadline(
    client: TestClient, api_key: str, clock: FakeClock
) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        ws.send_json({"type": "session.start", "config": {}})
        expect_error(ws, "missing_model")
        advance(client, clock, 10)
        assert terminated(ws, "start_timeout") == 1008


def test_idle_timeout(client: TestClient, api_key: str, clock: FakeClock) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, VALID)
        advance(client, clock, 299)  # past the start deadline: the watchdog now waits for the idle timeout
        waiting(clock)
        assert effective(ws) == VALID  # a frame: the idle timer starts again from now
        advance(client, clock, 1)  # 300 s after the start, but only 1 s after the last frame
        waiting(clock)  # the watchdog waits again: the session was not ended
        advance(client, clock, 299)
        assert terminated(ws, "idle_timeout") == 1000


def test_max_duration(settings: Settings, clock: FakeClock, api_key: str) -> None:
    limits = Settings(keys_dir=settings.keys_dir, idle_timeout_seconds=3600, max_duration_seconds=60)
    with serve(limits, clock) as (client, _), with_ticket(client, mint(client, api_key)) as ws:
        started(ws, VALID)
        advance(client, clock, 30)
        waiting(clock)
        assert effective(ws) == VALID
        advance(client, clock, 30)
        assert terminated(ws, "max_duration") == 1000


@pytest.mark.parametrize("before_start", [True, False])
def test_a_frame_over_the_limit_closes_1009(
    settings: Settings, clock: FakeClock, api_key: str, before_start: bool
) -> None:
    small = Settings(keys_dir=settings.keys_dir, max_frame_bytes=2048)
    with serve(small, clock) as (client, _), with_ticket(client, mint(client, api_key)) as ws:
        if not before_start:
            started(ws, VALID)
            assert text_of(say(ws, "x" * 1900)) == "You said: " + "x" * 1900
        ws.send_json({"type": "text.input", "text": "x" * 2100})
        assert close_code(ws) == 1009


@pytest.mark.parametrize("before_start", [False, True])
def test_server_shutdown(app: Starlette, client: TestClient, api_key: str, before_start: bool) -> None:
    services: Services = app.state.services
    assert client.portal is not None
    with with_ticket(client, mint(client, api_key)) as ws:
        if not before_start:
            started(ws, VALID)
        poll(lambda: services.sessions.active == 1, "the session to open", timeout=10, interval=0.001)
        client.portal.call(partial(services.sessions.drain, timeout=5))
        assert terminated(ws, "server_shutdown") == 1012
    assert services.sessions.active == 0


def test_server_shutdown_during_a_response(settings: Settings, clock: FakeClock, api_key: str) -> None:
    """Nothing goes out after `session.terminating`, even with deltas streaming as fast as they can.

    (A delta waiting to be sent while the session closed used to crash the session.)
    """
    for _ in range(10):
        with serve(settings, clock, upstream=LocalUpstream(pace=0)) as (client, services):
            with with_ticket(client, mint(client, api_key)) as ws:
                started(ws, VALID)
                ask(ws, "word " * 2000)
                assert receive(ws)["type"] == "text.delta"
                assert client.portal is not None
                client.portal.call(partial(services.sessions.drain, timeout=5))
                assert terminated(ws, "server_shutdown") == 1012
            assert services.sessions.active == 0


class FailingConnection:
    """An upstream that breaks on the first text input, or on connect."""

    def __init__(self) -> None:
        self._broken = anyio.Event()

    async def send(self, event: Event) -> None:
        if event["type"] == "text.input":
            self._broken.set()

    async def receive(self) -> Event | None:
        await self._broken.wait()
        raise UpstreamError("the model went away")


class FailingUpstream:
    def __init__(self, *, on_connect: bool) -> None:
        self._on_connect = on_connect

    @asynccontextmanager
    async def connect(self, session: SessionInfo) -> AsyncIterator[FailingConnection]:
        if self._on_connect:
            raise UpstreamError("the model cannot be reached")
        yield FailingConnection()


def test_an_upstream_failure_mid_session_closes_1011(
    settings: Settings, clock: FakeClock, api_key: str
) -> None:
    with serve(settings, clock, upstream=FailingUpstream(on_connect=False)) as (client, _):
        with with_ticket(client, mint(client, api_key)) as ws:
            started(ws, VALID)
            ws.send_json({"type": "text.input", "text": "hello"})
            assert terminated(ws, "upstream_error") == 1011


class ScriptedTransport:
    """A client that sends the given frames, then goes away (None)."""

    def __init__(self, frames: list[str]) -> None:
        self._frames = [*frames, None]
        self.sent: list[Event | str] = []

    async def receive(self) -> str | bytes | None:
        await anyio.sleep(0)
        return self._frames.pop(0) if self._frames else None

    async def send(self, event: Event | str) -> None:
        self.sent.append(event)

    async def close(self, code: int, reason: str = "") -> None:
        return None


def test_a_finished_session_is_freed_by_reference_counting(settings: Settings) -> None:
    """No reference cycle keeps a session (and with it the connection) alive until a GC pass.

    The session's task, its timer and the CancelledError that stops the upstream pump each pointed
    back at the session; under load that left about a hundred objects per handshake to the garbage
    collector.
    """

    async def one_session() -> tuple[weakref.ref[SessionDriver], list[Event | str]]:
        transport = ScriptedTransport([json.dumps({"type": "session.start", "config": VALID})])
        clock = SystemClock()
        core = SessionCore(
            "sess_1",
            project="proj_test",
            binding=None,
            settings=settings,
            registry=ModelRegistry.load(),
            now=clock.now(),
        )
        driver = SessionDriver(core, transport, upstream=LocalUpstream(), clock=clock)
        await driver.run()
        return weakref.ref(driver), transport.sent

    gc.collect()
    gc.disable()
    try:
        ref, sent = asyncio.run(one_session())
        assert [event["type"] for event in sent if isinstance(event, dict)] == ["session.started"]
        assert ref() is None
    finally:
        gc.enable()


class BuggyConnection(FailingConnection):
    """An upstream whose receive fails with a plain bug (not an UpstreamError) after a text input."""

    async def receive(self) -> Event | None:
        await self._broken.wait()
        raise RuntimeError("a bug in the upstream adapter")


class BuggyUpstream:
    @asynccontextmanager
    async def connect(self, session: SessionInfo) -> AsyncIterator[BuggyConnection]:
        yield BuggyConnection()


def test_a_failing_upstream_pump_ends_the_session_as_an_upstream_error(
    settings: Settings, clock: FakeClock, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the upstream-to-client direction neither hangs the session nor leaks it."""
    with serve(settings, clock, upstream=BuggyUpstream()) as (client, services):
        with with_ticket(client, mint(client, api_key)) as ws:
            started(ws, VALID)
            ws.send_json({"type": "text.input", "text": "hello"})
            assert terminated(ws, "upstream_error") == 1011
        poll(lambda: services.sessions.active == 0, "the session to end", timeout=10, interval=0.001)
    failures = [record for record in caplog.records if "upstream pump failed" in record.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelname == "ERROR"
    assert failures[0].exc_info is not None and "a bug" in str(failures[0].exc_info[1])


def test_an_upstream_that_cannot_connect_closes_1011(
    settings: Settings, clock: FakeClock, api_key: str
) -> None:
    with serve(settings, clock, upstream=FailingUpstream(on_connect=True)) as (client, _):
        with with_ticket(client, mint(client, api_key)) as ws:
            ws.send_json({"type": "session.start", "config": VALID})
            event = receive(ws)
            assert event["type"] == "session.terminating"
            assert event["error"]["code"] == "upstream_error"
            assert close_code(ws) == 1011


# 4. The local model ----------------------------------------------------------------------------


def test_text_in_gives_a_streamed_response(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {**VALID, "modalities": ["text"]})
        events = say(ws, "hello there")
        kinds = [event["type"] for event in events]
        assert kinds[0] == "response.started"
        assert kinds[-1] == "response.completed"
        assert set(kinds[1:-1]) == {"text.delta"}
        assert len(kinds) > 3
        assert text_of(events) == "You said: hello there"
        assert events[-1]["status"] == "completed"


def _audio_deltas(events: list[Event], rate: int) -> None:
    audio = [base64.b64decode(event["audio"]) for event in events if event["type"] == "audio.delta"]
    assert audio
    for chunk in audio:
        assert len(chunk) == 2 * rate // 10  # 100 ms of PCM16 at the model's output rate
        samples = array.array("h", chunk)
        assert max(abs(sample) for sample in samples) > 1000


@pytest.mark.parametrize(("model", "rate"), [(OPENAI, 24000), (GEMINI, 16000)])
def test_server_vad_cuts_a_turn_on_silence(client: TestClient, api_key: str, model: str, rate: int) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {"model": model, "input_transcription": True})
        append(ws, loud(rate, 400) + silence(rate, 700), rate=rate)
        events = until(ws)
        kinds = [event["type"] for event in events]
        assert kinds[:4] == ["speech.started", "speech.stopped", "transcript.committed", "response.started"]
        assert events[2]["transcript"]
        assert "text.delta" in kinds
        assert "audio.delta" in kinds
        assert events[-1]["status"] == "completed"
        _audio_deltas(events, 24000)


def test_turn_detection_without_a_type_is_server_vad(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {**VALID, "turn_detection": {"silence_duration_ms": 200}, "input_transcription": True})
        append(ws, loud(24000, 200) + silence(24000, 300))
        ws.send_json({"type": "audio.commit"})  # without detection, this commit would end the turn
        events = until(ws, "transcript.committed")
        assert [event["type"] for event in events] == [
            "speech.started",
            "speech.stopped",
            "transcript.committed",
        ]
        # Cut by the detector after 200 ms of quiet (0.4 s in all), not by the commit (0.5 s).
        assert events[-1]["transcript"] == "[0.4 s of audio]"


def test_no_transcript_without_input_transcription(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, VALID)
        append(ws, loud(24000, 300) + silence(24000, 600))
        kinds = [event["type"] for event in until(ws)]
        assert kinds[:3] == ["speech.started", "speech.stopped", "response.started"]
        assert "transcript.committed" not in kinds


def test_server_vad_takes_zero_as_a_setting(client: TestClient, api_key: str) -> None:
    """`silence_duration_ms: 0` cuts the turn at the first quiet window, not after the default 500 ms."""
    turn = {"type": "server_vad", "silence_duration_ms": 0}
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {**VALID, "turn_detection": turn, "input_transcription": True})
        append(ws, loud(24000, 200) + silence(24000, 600))
        events = until(ws)
        kinds = [event["type"] for event in events]
        assert kinds[:3] == ["speech.started", "speech.stopped", "transcript.committed"]
        # Cut at the first 20 ms window of silence; 500 ms of silence would have made it 0.7 s.
        assert events[2]["transcript"] == "[0.2 s of audio]"


def test_audio_commit_ends_a_turn_without_vad(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {**VALID, "turn_detection": {"type": "none"}, "input_transcription": True})
        append(ws, loud(24000, 300) + silence(24000, 700))
        ws.send_json({"type": "audio.commit"})
        events = until(ws)
        kinds = [event["type"] for event in events]
        assert kinds[:4] == ["speech.started", "speech.stopped", "transcript.committed", "response.started"]
        assert "I heard 1.0 seconds of audio." in text_of(events)
        _audio_deltas(events, 24000)


def test_audio_clear_drops_the_appended_audio(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {**VALID, "turn_detection": {"type": "none"}})
        append(ws, loud(24000, 300))
        ws.send_json({"type": "audio.clear"})
        ws.send_json({"type": "audio.commit"})
        expect_error(ws, "invalid_event")
        assert effective(ws) == {**VALID, "turn_detection": {"type": "none"}}


def test_image_input_is_acknowledged(client: TestClient, api_key: str) -> None:
    with with_ticket(client, mint(client, api_key)) as ws:
        started(ws, {**VALID, "modalities": ["text"]})
        ws.send_json(
            {"type": "image.input", "image_url": "https://example.com/cat.png", "image_detail": "low"}
        )
        ws.send_json({"type": "response.create"})
        assert text_of(until(ws)) == "I see 1 image."


def test_tool_call_and_result(client: TestClient, api_key: str) -> None:
    tools = [{"name": "get_weather", "description": "Weather for a city"}]
    with with_ticket(client, mint(client, api_key, {"model": OPENAI, "tools": tools})) as ws:
        started(ws, {"modalities": ["text"]})
        events = say(ws, "what does get_weather say for Paris")
        calls = [event for event in events if event["type"] == "tool.call"]
        assert len(calls) == 1
        call = calls[0]
        assert call["tool_name"] == "get_weather"
        assert json.loads(call["tool_arguments"]) == {"text": "what does get_weather say for Paris"}
        ws.send_json(
            {"type": "tool.result", "tool_call_id": call["tool_call_id"], "tool_result": "sunny, 21 C"}
        )
        ws.send_json({"type": "response.create"})
        answer = until(ws)
        assert "tool.call" not in [event["type"] for event in answer]
        assert "sunny, 21 C" in text_of(answer)


@contextmanager
def paced_text_session(
    settings: Settings, clock: FakeClock, api_key: str
) -> Iterator[tuple[TestClient, FakeClock, WebSocketTestSession]]:
    """A started text session on a local model whose deltas wait for its own clock (`pace`)."""
    pace = FakeClock()
    with serve(settings, clock, upstream=LocalUpstream(pace=1.0, clock=pace)) as (client, _):
        with with_ticket(client, mint(client, api_key)) as ws:
            started(ws, {**VALID, "modalities": ["text"]})
            yield client, pace, ws


def ask(ws: WebSocketTestSession, text: str) -> None:
    """Send `text` and ask for a response; the next event must be `response.started`."""
    ws.send_json({"type": "text.input", "text": text})
    ws.send_json({"type": "response.create"})
    assert receive(ws) == {"type": "response.started"}


def step_through_answer(client: TestClient, pace: FakeClock, ws: WebSocketTestSession, text: str) -> None:
    """Move the model's clock one pause per word: the deltas spell `text`, then the response completes."""
    deltas = []
    for _ in text.split(" "):
        advance(client, pace, 1)
        deltas.append(receive(ws))
    assert text_of(deltas) == text
    assert receive(ws) == {"type": "response.completed", "status": "completed"}


def test_response_cancel_stops_the_response(settings: Settings, clock: FakeClock, api_key: str) -> None:
    with paced_text_session(settings, clock, api_key) as (client, pace, ws):
        ask(ws, "one two three four five six")
        advance(client, pace, 1)
        assert receive(ws) == {"type": "text.delta", "delta": "You "}
        waiting(pace)
        ws.send_json({"type": "response.cancel"})
        assert receive(ws) == {"type": "response.completed", "status": "cancelled"}
        # The next response runs in full.
        ask(ws, "again")
        step_through_answer(client, pace, ws, "You said: again")


def test_a_second_response_while_one_runs_is_an_error(
    settings: Settings, clock: FakeClock, api_key: str
) -> None:
    with paced_text_session(settings, clock, api_key) as (client, pace, ws):
        ask(ws, "hello")
        ws.send_json({"type": "response.create"})
        # The refusal is not held back behind the delta in flight: the clock has not moved.
        expect_error(ws, "invalid_event")
        step_through_answer(client, pace, ws, "You said: hello")


def test_speech_over_a_response_is_heard_at_once(settings: Settings, clock: FakeClock, api_key: str) -> None:
    with paced_text_session(settings, clock, api_key) as (client, pace, ws):
        ask(ws, "tell me a story")
        advance(client, pace, 1)
        assert receive(ws) == {"type": "text.delta", "delta": "You "}
        append(ws, loud(24000, 100))
        assert receive(ws) == {"type": "speech.started"}
        ws.send_json({"type": "response.cancel"})
        assert receive(ws) == {"type": "response.completed", "status": "cancelled"}


# 5. The local model's bounds -------------------------------------------------------------------


def local_connection(config: Event) -> LocalConnection:
    registry = ModelRegistry.load()
    return LocalConnection(SessionInfo("sess_test", "proj", config, registry.get(config["model"])), pace=0.0)


def test_the_local_model_counts_what_it_holds() -> None:
    async def scenario() -> list[int]:
        connection = local_connection({**VALID, "modalities": ["text"]})
        sizes = [connection.buffered_bytes()]
        await connection.send({"type": "text.input", "text": "x" * 1000})
        await connection.send({"type": "tool.result", "tool_call_id": "call_9", "tool_result": "r" * 500})
        sizes.append(connection.buffered_bytes())
        await connection.send({"type": "audio.commit"})  # nothing appended: an error waits in the outbox
        sizes.append(connection.buffered_bytes())
        await connection.send({"type": "response.create"})  # the turn moves into the response
        sizes.append(connection.buffered_bytes())
        while (await connection.receive() or {}).get("type") != "response.completed":
            pass
        sizes.append(connection.buffered_bytes())
        await connection.aclose()
        return sizes

    empty, gathered, with_error, answering, done = asyncio.run(scenario())
    assert empty == 0
    assert gathered == 1000 + len("unknown") + 500
    assert with_error > gathered
    assert answering >= gathered
    assert done == 0


def test_a_reply_is_made_one_delta_at_a_time() -> None:
    """The reply to a megabyte of words is a generator: nothing is built before it is sent."""
    connection = local_connection({**VALID, "modalities": ["text"]})
    turn = Turn(texts=["x " * 500_000])
    deltas = reply_deltas(turn, ["text"], connection._session)
    assert isinstance(deltas, Iterator) and not isinstance(deltas, list)
    first = [next(deltas)["delta"] for _ in range(4)]
    assert first == ["You ", "said: ", "x ", "x "]
    assert sum(1 for _ in deltas) == 500_000 - 2


def test_the_energy_detector_matches_the_definition() -> None:
    rate = 24000
    audio = loud(rate, 50) + silence(rate, 30)
    got = list(windows(audio, rate))
    samples = array.array("h", audio)
    step = rate * 20 // 1000
    want = []
    for start in range(0, len(samples), step):
        chunk = samples[start : start + step]
        want.append((len(chunk) * 1000 / rate, math.sqrt(sum(x * x for x in chunk) / len(chunk)) / 32768))
    assert [ms for ms, _ in got] == [ms for ms, _ in want]
    assert [energy for _, energy in got] == pytest.approx([energy for _, energy in want])


@pytest.mark.parametrize(
    "turn",
    [
        Turn(texts=["hello there"]),
        Turn(texts=["a  b ", "/config"], tool_results=[("t", "r s")]),
        Turn(audio_ms=1000, images=2),
        Turn(),
    ],
    ids=["text", "spaces-config-tool", "audio-images", "empty"],
)
def test_reply_words_are_the_reply_split_after_each_space(turn: Turn) -> None:
    config = {"model": OPENAI}
    sentences = [f"The tool {name} returned {result}." for name, result in turn.tool_results]
    for text in turn.texts:
        compact = json.dumps(config, separators=(",", ":"))
        sentences.append(compact if text == "/config" else f"You said: {text}")
    if turn.audio_ms:
        sentences.append(f"I heard {turn.audio_ms / 1000:.1f} seconds of audio.")
    if turn.images:
        sentences.append(f"I see {turn.images} images.")
    reply = " ".join(sentences) or "Hello from the local model."
    words = list(reply_words(turn, config))
    assert "".join(words) == reply
    assert all(word.count(" ") <= 1 and (" " not in word or word.endswith(" ")) for word in words)


def test_a_shutdown_asked_before_the_session_ran_is_not_lost(settings: Settings) -> None:
    """The drain may reach a session whose tasks have not started yet."""

    class SilentClient(ScriptedTransport):
        async def receive(self) -> str | bytes | None:
            await asyncio.Event().wait()  # never sends a frame, never goes
            return None

    async def scenario() -> list[Event | str]:
        transport = SilentClient([])
        clock = SystemClock()
        core = SessionCore(
            "sess_1",
            project="p",
            binding=None,
            settings=settings,
            registry=ModelRegistry.load(),
            now=clock.now(),
        )
        driver = SessionDriver(core, transport, upstream=LocalUpstream(), clock=clock)
        driver.shutdown()
        async with asyncio.timeout(10):
            await driver.run()
        return transport.sent

    sent = asyncio.run(scenario())
    assert [event["type"] for event in sent if isinstance(event, dict)] == ["session.terminating"]
