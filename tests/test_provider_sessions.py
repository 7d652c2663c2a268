"""`REALTIME_UPSTREAM=providers` for real: a uvicorn edge in front of fake OpenAI, xAI and Gemini servers.

The fakes check every message the edge sends against the providers' SDK types; a test ends by
asserting they saw no violation. The browser side is a plain `websockets` client speaking this
protocol, with a ticket (bound config) or a bearer key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fake_providers import FakeProvider
from tests.provider_sessions import (
    BROWSER,
    GEMINI,
    GEMINI_KEY,
    OPENAI,
    OPENAI_KEY,
    WEATHER,
    XAI,
    XAI_KEY,
    Deployment,
    ask,
    assert_terminated,
    deployed,
    dropped,
    edge_process,
    pcm,
    receive,
    receive_until,
    send,
    session,
    start,
    text_of,
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        tmp_path_factory.mktemp("providers"),
        REALTIME_UPSTREAM_TIMEOUT_SECONDS="2",
        REALTIME_MAX_BYTES_PER_SECOND=str(64 << 20),
        REALTIME_MAX_FRAMES_PER_SECOND="10000",
    ) as running:
        yield running


def test_openai_binding_holds_at_the_provider(deployment: Deployment) -> None:
    bound = {
        "model": OPENAI,
        "voice": "marin",
        "instructions": "Answer as the bound assistant.",
        "tools": [WEATHER],
    }
    fake = deployment.openai
    with session(deployment, ticket=deployment.mint(bound)) as ws:
        started = start(ws, {**BROWSER, "voice": "ash", "model": XAI})
        assert (started["model"], started["voice"], started["output_sample_rate"]) == (OPENAI, "marin", 24000)
        opening = fake.openings[-1]
        assert opening["instructions"] == "Answer as the bound assistant."
        assert opening["audio"]["output"]["voice"] == "marin"
        assert [tool["name"] for tool in opening["tools"]] == ["get_weather"]
        assert fake.requests[-1] == "/v1/realtime?model=gpt-realtime-2"
        assert fake.headers[-1]["Authorization"] == f"Bearer {OPENAI_KEY}"

        send(ws, {"type": "session.update", "config": {**BROWSER, "voice": "ash", "modalities": ["text"]}})
        assert receive(ws)["type"] == "session.updated"
        assert "echo: after the update" in text_of(ask(ws, "after the update"))
        update = fake.of_type("session.update")[-1]["session"]
        assert update["instructions"] == "Answer as the bound assistant."
        assert [tool["name"] for tool in update["tools"]] == ["get_weather"]
        assert update["output_modalities"] == ["text"]  # unbound: the browser's choice passes
        assert "voice" not in update["audio"]["output"]  # the bound voice did not change


def test_openai_text_audio_tool_and_cancel(deployment: Deployment) -> None:
    fake = deployment.openai
    with session(deployment, ticket=deployment.mint({"model": OPENAI, "tools": [WEATHER]})) as ws:
        start(ws, {"input_transcription": True})
        before = dropped(deployment, "openai", "rate_limits.updated")

        # A text turn: audio output, its transcript as text.
        events = ask(ws, "hello provider")
        types = [event["type"] for event in events]
        assert types[0] == "response.started" and "audio.delta" in types
        assert text_of(events) == "echo: hello provider"
        assert fake.of_type("conversation.item.create")[-1]["item"]["content"] == [
            {"type": "input_text", "text": "hello provider"}
        ]
        assert dropped(deployment, "openai", "rate_limits.updated") > before  # no counterpart: counted

        # An audio turn at 24 kHz, passed through as sent.
        audio = pcm(200, 24000)
        send(ws, {"type": "audio.append", "audio": audio})
        send(ws, {"type": "audio.commit"})
        assert [receive(ws)["type"] for _ in range(3)] == [
            "speech.started",
            "speech.stopped",
            "transcript.committed",
        ]
        send(ws, {"type": "response.create"})
        assert "audio.delta" in [event["type"] for event in receive_until(ws, "response.completed")]
        assert fake.of_type("input_audio_buffer.append")[-1]["audio"] == audio

        # A tool round trip.
        call = next(event for event in ask(ws, "call get_weather for Paris") if event["type"] == "tool.call")
        assert call["tool_name"] == "get_weather" and json.loads(call["tool_arguments"]) == {"city": "Paris"}
        send(ws, {"type": "tool.result", "tool_call_id": call["tool_call_id"], "tool_result": "sunny"})
        send(ws, {"type": "response.create"})
        assert text_of(receive_until(ws, "response.completed")) == "the tool said sunny"
        output = fake.of_type("conversation.item.create")[-1]["item"]
        assert output == {"type": "function_call_output", "call_id": call["tool_call_id"], "output": "sunny"}

        # Cancel a response in flight.
        send(ws, {"type": "text.input", "text": "keep talking"})
        send(ws, {"type": "response.create"})
        assert receive(ws)["type"] == "response.started"
        send(ws, {"type": "response.cancel"})
        assert receive_until(ws, "response.completed")[-1] == {
            "type": "response.completed",
            "status": "cancelled",
        }
        assert fake.of_type("response.cancel")

        # Clear and an image are passed on too.
        send(ws, {"type": "audio.clear"})
        send(ws, {"type": "image.input", "image_url": "data:image/png;base64,iVBORw0KGgo="})
        send(ws, {"type": "response.create"})
        assert (
            text_of(receive_until(ws, "response.completed"))
            == "echo: an image data:image/png;base64,iVBORw0K"
        )
        assert fake.of_type("input_audio_buffer.clear")


def test_openai_error_event_is_not_fatal_and_hides_the_key(deployment: Deployment) -> None:
    with session(deployment) as ws:
        start(ws, {"model": OPENAI, "modalities": ["text"]})
        send(ws, {"type": "text.input", "text": "provoke error"})
        send(ws, {"type": "response.create"})
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["code"] == "upstream_error"
        message = error["error"]["message"]
        assert message == "openai: the key *** cannot do that. Incorrect API key provided: ***."
        assert OPENAI_KEY[-4:] not in message
        assert text_of(ask(ws, "still here")) == "echo: still here"


@pytest.mark.parametrize(
    ("provider", "mode", "message"),
    [
        ("openai", "refuse", r"^openai refused the connection \(HTTP 503\)$"),
        ("openai", "mute", r"^openai did not acknowledge the session within 2 s$"),
        ("openai", "reject", r"^openai refused the session: Unknown parameter: 'session.x'.$"),
        ("xai", "refuse", r"^xai refused the connection \(HTTP 503\)$"),
        ("gemini", "refuse", r"^gemini refused the connection \(HTTP 503\)$"),
        ("gemini", "mute", r"^gemini did not acknowledge the session within 2 s$"),
    ],
    ids=[
        "openai-refused-at-connect",
        "openai-start-timeout",
        "openai-error-instead-of-start",
        "xai-refused-at-connect",
        "gemini-refused-at-connect",
        "gemini-start-timeout",
    ],
)
def test_start_failures_end_the_session(
    deployment: Deployment, provider: str, mode: str, message: str
) -> None:
    fake: FakeProvider = getattr(deployment, provider)
    model = {"openai": OPENAI, "xai": XAI, "gemini": GEMINI}[provider]
    fake.mode = mode
    try:
        with session(deployment) as ws:
            send(ws, {"type": "session.start", "config": {"model": model}})
            assert_terminated(ws, message)
    finally:
        fake.mode = "normal"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "close the socket",
            r"^openai closed the connection mid-session \(close code 1011: provider failure\)$",
        ),
        ("stop reading", r"^openai stopped reading: a send waited over 2 s$"),
    ],
    ids=["closed-mid-session", "stopped-reading"],
)
def test_openai_failures_mid_session_end_it(deployment: Deployment, text: str, message: str) -> None:
    with session(deployment) as ws:
        start(ws, {"model": OPENAI})
        send(ws, {"type": "text.input", "text": text})
        send(ws, {"type": "response.create"})
        if text == "stop reading":
            # The provider reads nothing more: the edge's sends fill the buffers between them, then wait.
            chunk = {"type": "audio.append", "audio": pcm(8000, 24000)}  # 384 KB a frame
            try:
                for _ in range(200):
                    send(ws, chunk)
            except (ConnectionClosed, TimeoutError, OSError):
                pass
        assert_terminated(ws, message)


# xAI ---------------------------------------------------------------------------------------------


def test_xai_session_uses_its_own_url_and_key(deployment: Deployment) -> None:
    fake = deployment.xai
    with session(
        deployment, ticket=deployment.mint({"model": XAI, "voice": "eve", "tools": [WEATHER]})
    ) as ws:
        started = start(ws, {**BROWSER, "voice": "rex"})
        assert (started["model"], started["voice"]) == (XAI, "eve")
        opening = fake.openings[-1]
        assert opening["voice"] == "eve" and "reasoning" not in opening  # xAI's own shape
        assert [tool["name"] for tool in opening["tools"]] == ["get_weather"]
        assert fake.requests[-1] == "/v1/realtime?model=grok-voice-latest"
        assert fake.headers[-1]["Authorization"] == f"Bearer {XAI_KEY}"
        assert text_of(ask(ws, "hello grok")) == "echo: hello grok"
        call = next(event for event in ask(ws, "get_weather please") if event["type"] == "tool.call")
        send(ws, {"type": "tool.result", "tool_call_id": call["tool_call_id"], "tool_result": "windy"})
        send(ws, {"type": "response.create"})
        assert text_of(receive_until(ws, "response.completed")) == "the tool said windy"


# Gemini ------------------------------------------------------------------------------------------


def test_gemini_binding_turns_tools_and_what_it_cannot_do(deployment: Deployment) -> None:
    fake = deployment.gemini
    bound = {
        "model": GEMINI,
        "voice": "Kore",
        "instructions": "Bound.",
        "tools": [WEATHER],
        "input_transcription": True,
    }
    with session(deployment, ticket=deployment.mint(bound)) as ws:
        started = start(ws, {**BROWSER, "voice": "Puck"})
        assert (started["voice"], started["input_sample_rate"], started["output_sample_rate"]) == (
            "Kore",
            16000,
            24000,
        )
        setup = fake.openings[-1]
        assert setup["model"] == "models/gemini-3.1-flash-live-preview"
        assert setup["systemInstruction"] == {"parts": [{"text": "Bound."}]}
        assert setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"] == {
            "voiceName": "Kore"
        }
        assert setup["generationConfig"]["temperature"] == 0.5  # unbound: the browser's value
        assert [declaration["name"] for declaration in setup["tools"][0]["functionDeclarations"]] == [
            "get_weather"
        ]
        assert fake.headers[-1]["x-goog-api-key"] == GEMINI_KEY

        events = ask(ws, "hello gemini")
        assert [event["type"] for event in events][:2] == ["response.started", "audio.delta"]
        assert text_of(events) == "echo: hello gemini"

        # Audio at 16 kHz: the provider's voice activity and transcript, then its answer.
        audio = pcm(200, 16000)
        send(ws, {"type": "audio.append", "audio": audio})
        send(ws, {"type": "audio.commit"})
        events = receive_until(ws, "response.completed")
        types = [event["type"] for event in events]
        assert types[:4] == [
            "speech.started",
            "speech.stopped",
            "transcript.committed",
            "response.started",
        ] or types[:3] == ["speech.stopped", "transcript.committed", "response.started"]
        assert next(event for event in events if event["type"] == "transcript.committed")["transcript"] == (
            "heard 6400 bytes"
        )
        assert fake.of_type("realtimeInput")[-2]["realtimeInput"]["audio"] == {
            "data": audio,
            "mimeType": "audio/pcm;rate=16000",
        }

        # A tool round trip: the result carries the call's id and name.
        call = next(event for event in ask(ws, "get_weather in Oslo") if event["type"] == "tool.call")
        send(ws, {"type": "tool.result", "tool_call_id": call["tool_call_id"], "tool_result": "cold"})
        send(ws, {"type": "response.create"})
        assert text_of(receive_until(ws, "response.completed")) == "the tool said cold"
        (response,) = fake.of_type("toolResponse")[-1]["toolResponse"]["functionResponses"]
        assert response == {"id": call["tool_call_id"], "name": "get_weather", "response": {"output": "cold"}}

        # What Gemini cannot do: non-fatal errors, and the session goes on.
        for event, code in (
            ({"type": "session.update", "config": {"voice": "Puck"}}, "session_update_unsupported"),
            ({"type": "audio.clear"}, "unsupported_event"),
            ({"type": "response.cancel"}, "unsupported_event"),
        ):
            send(ws, event)
            answer = receive(ws)
            assert (answer["type"], answer["error"]["code"]) == ("error", code)
        completed = ask(ws, "still there")
        assert text_of(completed) == "echo: still there"
        assert completed[-1]["usage"] == {"input_tokens": 5, "output_tokens": 7}  # Gemini's usageMetadata


def test_gemini_text_output_and_manual_turns(deployment: Deployment) -> None:
    with session(deployment) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"], "turn_detection": {"type": "none"}})
        events = ask(ws, "text please")
        assert [event["type"] for event in events] == ["response.started", "text.delta", "response.completed"]
        send(ws, {"type": "audio.append", "audio": pcm(100, 16000)})
        send(ws, {"type": "audio.commit"})
        assert receive_until(ws, "response.completed")[0] == {"type": "speech.started"}
        send(ws, {"type": "image.input", "image_url": "data:image/jpeg;base64,/9j/4AAQ"})
        assert text_of(ask(ws, "and this")) == "echo: and this (with an image of type image/jpeg)"
        send(ws, {"type": "image.input", "image_url": "https://example.com/cat.png"})
        assert receive(ws)["error"]["code"] == "unsupported_event"
    realtime = [message["realtimeInput"] for message in deployment.gemini.of_type("realtimeInput")[-6:]]
    assert list(realtime[1]) == ["activityStart"] and list(realtime[3]) == ["activityEnd"]
    video = realtime[4]["video"]
    assert video["mimeType"] == "image/jpeg"
    # The fake records bytes as the SDK writes them back (URL-safe base64); the edge sent them as given.
    assert base64.urlsafe_b64decode(video["data"]) == base64.b64decode("/9j/4AAQ")
    # Text goes as realtime input: mid-session client content closes Gemini 3.1 sessions.
    assert deployment.gemini.of_type("clientContent") == []


def test_gemini_close_mid_session_names_the_close_code(deployment: Deployment) -> None:
    deployment.gemini.mode = "no_handles"  # nothing to resume with: the close ends the session
    try:
        with session(deployment) as ws:
            start(ws, {"model": GEMINI})
            send(ws, {"type": "text.input", "text": "close the socket"})
            send(ws, {"type": "response.create"})
            assert_terminated(
                ws, r"^gemini closed the connection mid-session \(close code 1011: provider failure\)$"
            )
    finally:
        deployment.gemini.mode = "normal"


# Models without a key ----------------------------------------------------------------------------


def test_models_without_a_provider_key_are_not_served(tmp_path: Path) -> None:
    with FakeProvider("openai", key=OPENAI_KEY) as fake:
        edge, api_key = edge_process(
            tmp_path, "openai-only", REALTIME_OPENAI_API_KEY=OPENAI_KEY, REALTIME_OPENAI_URL=fake.url
        )
        with edge:
            listed = httpx.get(edge.url + "/v3/models?type=realtime", timeout=10).json()["data"]
            assert [model["id"] for model in listed] == [OPENAI]
            headers = {"Authorization": f"Bearer {api_key}"}
            for model in (XAI, GEMINI):
                response = httpx.post(
                    edge.url + "/v3/realtime-sessions",
                    headers=headers,
                    json={"config": {"model": model}},
                    timeout=10,
                )
                assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_model"
            with connect(edge.ws_url, additional_headers=headers, open_timeout=10) as ws:
                send(ws, {"type": "session.start", "config": {"model": GEMINI}})
                error = receive(ws)
                assert error["error"]["code"] == "unknown_model"
                assert "not served by this deployment" in error["error"]["message"]
                start(ws, {"model": OPENAI})  # the start may be retried with a served model
    assert fake.violations == []
