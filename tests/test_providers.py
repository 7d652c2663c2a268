"""Provider translation (docs/protocol.md) without an edge: every message against the SDK types, both ways.

The fakes in tests/fake_providers.py are proven here with the providers' official SDK clients, so the
end-to-end tests (tests/test_provider_sessions.py) run against servers that speak what the SDKs speak.
"""

from __future__ import annotations

import asyncio
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types as genai_types
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

from app.config import Settings
from app.exceptions import SettingsError, UpstreamError
from app.session.models import ModelRegistry
from app.session.upstream import SessionInfo
from app.session.usage import Usage
from app.sessionerrors import SessionUpdateUnsupportedError, UnknownModelError, UnsupportedEventError
from app.upstreams import served_registry
from app.upstreams.providers import translator_for
from app.upstreams.providers.adapter import ProvidersUpstream
from app.upstreams.providers.base import decode_message, redact
from app.upstreams.providers.connection import ProviderConnection
from app.upstreams.providers.gemini import KINDS as GEMINI_KINDS
from app.upstreams.providers.gemini import GeminiTranslator
from app.upstreams.providers.link import Endpoint
from app.upstreams.providers.openai import DROPPED, OpenAITranslator
from tests.fake_providers import FakeProvider
from tests.provider_types import Violation, check_gemini_client, check_openai_client, check_xai_client
from tests.tls import localhost_contexts

Event = dict[str, Any]
REGISTRY = ModelRegistry.load()
OPENAI = REGISTRY.get("openai/gpt-realtime-2")
XAI = REGISTRY.get("xai/grok-voice-latest")
GEMINI = REGISTRY.get("gemini/gemini-3.1-flash-live-preview")
TRANSLATE = REGISTRY.get("gemini/gemini-3.5-live-translate-preview")
OPENAI_KEY = "sk-test-0123456789abcdef"
GEMINI_KEY = "AIzaTest0123456789abcdef"
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city_name": {"type": "string"}}},
}
FULL = {
    "instructions": "Be brief.",
    "input_transcription": True,
    "turn_detection": {"type": "server_vad", "threshold": 0.4, "silence_duration_ms": 300},
    "tools": [WEATHER],
    "temperature": 0.6,
}
CLIENT_EVENTS: list[Event] = [
    {"type": "audio.append", "audio": "AAAAAA=="},
    {"type": "audio.commit"},
    {"type": "audio.clear"},
    {"type": "text.input", "text": "hello"},
    {"type": "response.create"},
    {"type": "response.cancel"},
    {"type": "tool.result", "tool_call_id": "call_1", "tool_result": "sunny"},
    {"type": "image.input", "image_url": "data:image/png;base64,iVBORw0KGgo=", "image_detail": "low"},
]


def openai(config: Event | None = None) -> OpenAITranslator:
    return OpenAITranslator({"voice": "marin", "reasoning_effort": "low", **FULL, **(config or {})}, OPENAI)


# OpenAI and xAI: ours -> theirs --------------------------------------------------------------


def test_openai_start_carries_the_effective_config() -> None:
    (message,) = openai().opening()
    check_openai_client(json.dumps(message))
    session = message["session"]
    assert message["type"] == "session.update" and session["type"] == "realtime"
    assert session["instructions"] == "Be brief."
    assert session["output_modalities"] == ["audio"]  # audio with its transcript as text
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.4,
        "silence_duration_ms": 300,
    }
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert session["tools"] == [{"type": "function", **WEATHER}]
    assert session["reasoning"] == {"effort": "low"}
    assert "temperature" not in session  # the GA session has no temperature


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"modalities": ["text"]}, ["text"]),
        ({"modalities": ["audio"]}, ["audio"]),
        ({"modalities": ["audio", "text"]}, ["audio"]),
    ],
    ids=["text", "audio", "audio-and-text"],
)
def test_openai_output_modalities(config: Event, expected: list[str]) -> None:
    (message,) = OpenAITranslator(config, OPENAI).opening()
    assert message["session"]["output_modalities"] == expected


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        ({"type": "none"}, None),
        ({"type": "semantic_vad", "threshold": 0.5}, {"type": "semantic_vad"}),
        ({"type": "server_vad", "prefix_padding_ms": 100}, {"type": "server_vad", "prefix_padding_ms": 100}),
    ],
    ids=["none", "semantic", "server"],
)
def test_openai_turn_detection(turn: Event, expected: Event | None) -> None:
    (message,) = OpenAITranslator({"turn_detection": turn}, OPENAI).opening()
    check_openai_client(json.dumps(message))
    assert message["session"]["audio"]["input"]["turn_detection"] == expected


def test_xai_gets_its_own_session_shape() -> None:
    translator = OpenAITranslator({"voice": "eve", **FULL}, XAI, provider="xai")
    (message,) = translator.opening()
    check_xai_client(json.dumps(message))
    session = message["session"]
    assert session["voice"] == "eve" and session["turn_detection"]["type"] == "server_vad"
    assert session["audio"] == {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
    }
    assert set(session) <= {"voice", "instructions", "turn_detection", "tools", "audio"}
    # Manual turns are a null turn detection; an update keeps an unchanged voice out.
    (update,) = translator.to_provider(
        {"type": "session.update", "config": {"voice": "eve", "turn_detection": {"type": "none"}}}
    )
    check_xai_client(json.dumps(update))
    assert update["session"]["turn_detection"] is None and "voice" not in update["session"]
    assert translator.manual_turns
    # OpenAI's nesting is refused by xAI's check: the voice would be ignored.
    (openai_shape,) = OpenAITranslator({"voice": "eve"}, XAI).opening()
    with pytest.raises(Violation, match="does not document"):
        check_xai_client(json.dumps(openai_shape))


@pytest.mark.parametrize("event", CLIENT_EVENTS, ids=[event["type"] for event in CLIENT_EVENTS])
def test_openai_client_events_are_valid_sdk_events(event: Event) -> None:
    messages = openai().to_provider(event)
    assert messages
    for message in messages:
        check_openai_client(json.dumps(message))


def test_openai_client_event_shapes() -> None:
    translator = openai()
    assert translator.to_provider(CLIENT_EVENTS[0]) == [
        {"type": "input_audio_buffer.append", "audio": "AAAAAA=="}
    ]
    (item,) = translator.to_provider({"type": "text.input", "text": "hi"})
    assert item["item"] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
    }
    (result,) = translator.to_provider(CLIENT_EVENTS[6])
    assert result["item"] == {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    (image,) = translator.to_provider(CLIENT_EVENTS[7])
    assert image["item"]["content"] == [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}
    ]


def test_openai_update_clears_what_the_config_no_longer_has_and_keeps_an_unchanged_voice() -> None:
    translator = openai()
    config = {**FULL, "voice": "marin", "reasoning_effort": "low", "instructions": None, "tools": None}
    (message,) = translator.to_provider({"type": "session.update", "config": config})
    check_openai_client(json.dumps(message))
    session = message["session"]
    assert session["instructions"] == "" and session["tools"] == []
    assert "voice" not in session["audio"]["output"]  # unchanged: OpenAI refuses a change after audio
    (changed,) = translator.to_provider({"type": "session.update", "config": {**config, "voice": "ash"}})
    assert changed["session"]["audio"]["output"]["voice"] == "ash"


# OpenAI: theirs -> ours ----------------------------------------------------------------------


def _delta(kind: str, delta: str) -> Event:
    return {"type": kind, "event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0,
            "content_index": 0, "delta": delta}  # fmt: skip


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (_delta("response.output_audio.delta", "AAAA"), [{"type": "audio.delta", "audio": "AAAA"}]),
        (_delta("response.output_text.delta", "hi"), [{"type": "text.delta", "delta": "hi"}]),
        (_delta("response.output_audio_transcript.delta", "hi"), [{"type": "text.delta", "delta": "hi"}]),
        ({"type": "response.created", "event_id": "e", "response": {}}, [{"type": "response.started"}]),
        (
            {"type": "response.done", "event_id": "e", "response": {}},
            [{"type": "response.completed", "status": "completed"}],
        ),
        (
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": "e",
                "item_id": "i",
                "audio_start_ms": 0,
            },
            [{"type": "speech.started"}],
        ),
        (
            {"type": "input_audio_buffer.speech_stopped", "event_id": "e", "item_id": "i", "audio_end_ms": 9},
            [{"type": "speech.stopped"}],
        ),
        (
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "e",
                "item_id": "i",
                "content_index": 0,
                "transcript": "hello",
                "usage": {"type": "duration", "seconds": 1.0},
            },
            [{"type": "transcript.committed", "transcript": "hello"}],
        ),  # fmt: skip
        (
            {
                "type": "response.function_call_arguments.done",
                "event_id": "e",
                "item_id": "i",
                "output_index": 0,
                "response_id": "r",
                "call_id": "c",
                "name": "get_weather",
                "arguments": "{}",
            },
            [{"type": "tool.call", "tool_call_id": "c", "tool_name": "get_weather", "tool_arguments": "{}"}],
        ),  # fmt: skip
        (
            {"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "message": "no"}},
            [{"type": "error", "error": {"code": "upstream_error", "message": "openai: no"}}],
        ),
        ({"type": "rate_limits.updated", "event_id": "e", "rate_limits": []}, None),
    ],
    ids=lambda value: value["type"] if isinstance(value, dict) else "",
)
def test_openai_server_events(message: Event, expected: list[Event] | None) -> None:
    assert openai().from_provider(message) == expected


def test_openai_transcript_is_text_only_when_text_is_asked_for() -> None:
    transcript = _delta("response.output_audio_transcript.delta", "hi")
    assert OpenAITranslator({"modalities": ["audio"]}, OPENAI).from_provider(transcript) is None
    both = OpenAITranslator({"modalities": ["audio"], "output_transcription": True}, OPENAI)
    assert both.from_provider(transcript) == [{"type": "text.delta", "delta": "hi"}]


def _literal_types(union: Any) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(member.model_fields["type"].annotation)[0] for member in members}


def test_every_openai_server_event_type_is_translated_or_counted() -> None:
    translated = {
        "response.output_audio.delta", "response.output_text.delta", "response.created", "response.done",
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "error", "session.updated",
        "conversation.item.input_audio_transcription.completed", "response.function_call_arguments.done",
        "conversation.item.input_audio_transcription.failed",
    }  # fmt: skip
    sdk = _literal_types(RealtimeServerEvent)
    assert sdk - translated - DROPPED == set()
    audio_only = OpenAITranslator({"modalities": ["audio"]}, OPENAI)  # its transcript is not asked for
    assert all(audio_only.from_provider({"type": kind}) is None for kind in DROPPED)


# Gemini --------------------------------------------------------------------------------------


def gemini(config: Event | None = None, model: Any = GEMINI) -> GeminiTranslator:
    return GeminiTranslator({"voice": "Kore", **FULL, **(config or {})}, model)


def test_gemini_setup_carries_the_effective_config() -> None:
    (message,) = gemini({"output_transcription": True}).opening()
    check_gemini_client(json.dumps(message))
    setup = message["setup"]
    assert setup["model"] == "models/gemini-3.1-flash-live-preview"
    assert setup["generationConfig"] == {
        "responseModalities": ["AUDIO"],
        "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}},
        "temperature": 0.6,
    }
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert setup["tools"] == [
        {"functionDeclarations": [{"name": "get_weather", "description": "Weather for a city",
                                   "parametersJsonSchema": WEATHER["parameters"]}]}
    ]  # fmt: skip
    assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"silenceDurationMs": 300}}
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}


def test_gemini_text_only_translation_and_manual_turns() -> None:
    translator = GeminiTranslator(
        {"modalities": ["audio"], "translation_target_language": "fr", "turn_detection": {"type": "none"}},
        TRANSLATE,
    )
    (message,) = translator.opening()
    check_gemini_client(json.dumps(message))
    assert message["setup"]["generationConfig"]["translationConfig"] == {"targetLanguageCode": "fr"}
    assert message["setup"]["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
    text = GeminiTranslator({"modalities": ["text"]}, GEMINI).opening()[0]["setup"]
    assert text["generationConfig"] == {"responseModalities": ["TEXT"]}


@pytest.mark.parametrize(
    "event",
    [event for event in CLIENT_EVENTS if event["type"] not in ("audio.clear", "response.cancel")],
    ids=lambda event: event["type"],
)
def test_gemini_client_events_are_valid_sdk_messages(event: Event) -> None:
    for turn in ({"type": "server_vad"}, {"type": "none"}):
        translator = gemini({"turn_detection": turn})
        for message in translator.to_provider(CLIENT_EVENTS[0]) + translator.to_provider(event):
            check_gemini_client(json.dumps(message))


def test_gemini_manual_turns_open_and_close_an_activity() -> None:
    translator = gemini({"turn_detection": {"type": "none"}})
    assert translator.to_provider({"type": "audio.commit"}) == []
    first = translator.to_provider(CLIENT_EVENTS[0])
    assert first[0] == {"realtimeInput": {"activityStart": {}}}
    assert first[1] == {"realtimeInput": {"audio": {"data": "AAAAAA==", "mimeType": "audio/pcm;rate=16000"}}}
    assert len(translator.to_provider(CLIENT_EVENTS[0])) == 1
    assert translator.to_provider({"type": "audio.commit"}) == [{"realtimeInput": {"activityEnd": {}}}]
    assert gemini().to_provider({"type": "audio.commit"}) == [{"realtimeInput": {"audioStreamEnd": True}}]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"type": "audio.clear"}, UnsupportedEventError),
        ({"type": "response.cancel"}, UnsupportedEventError),
        ({"type": "image.input", "image_url": "https://example.com/cat.png"}, UnsupportedEventError),
        ({"type": "session.update", "config": {}}, SessionUpdateUnsupportedError),
    ],
    ids=["audio.clear", "response.cancel", "image-url", "session.update"],
)
def test_gemini_events_without_counterpart(event: Event, error: type[Exception]) -> None:
    with pytest.raises(error):
        gemini().to_provider(event)


def test_gemini_server_messages_make_responses() -> None:
    translator = gemini()
    audio = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAAA"}}
    assert translator.from_provider({"voiceActivity": {"voiceActivityType": "ACTIVITY_START"}}) == [
        {"type": "speech.started"}
    ]
    assert translator.from_provider({"serverContent": {"inputTranscription": {"text": "hel"}}}) is None
    assert translator.from_provider({"serverContent": {"modelTurn": {"parts": [audio]}}}) == [
        {"type": "transcript.committed", "transcript": "hel"},
        {"type": "response.started"},
        {"type": "audio.delta", "audio": "AAAA"},
    ]
    assert translator.from_provider({"serverContent": {"outputTranscription": {"text": "hi"}}}) == [
        {"type": "text.delta", "delta": "hi"}
    ]
    assert translator.from_provider({"serverContent": {"turnComplete": True}}) == [
        {"type": "response.completed", "status": "completed"}
    ]
    call = {"toolCall": {"functionCalls": [{"id": "c1", "name": "get_weather", "args": {"city": "Oslo"}}]}}
    assert translator.from_provider(call) == [
        {"type": "response.started"},
        {
            "type": "tool.call",
            "tool_call_id": "c1",
            "tool_name": "get_weather",
            "tool_arguments": '{"city":"Oslo"}',
        },
        {"type": "response.completed", "status": "completed"},
    ]
    # The result names the call's function, and Gemini goes on by itself: no second turn.
    (result,) = translator.to_provider({"type": "tool.result", "tool_call_id": "c1", "tool_result": "cold"})
    assert result["toolResponse"]["functionResponses"][0] == {
        "id": "c1",
        "name": "get_weather",
        "response": {"output": "cold"},
    }
    assert translator.to_provider({"type": "response.create"}) == []
    assert translator.to_provider({"type": "response.create"}) == []  # Gemini answers by itself
    assert translator.from_provider({"usageMetadata": {"totalTokenCount": 3}}) == []  # counted
    translator.from_provider({"serverContent": {"modelTurn": {"parts": [audio]}}})
    assert translator.from_provider({"serverContent": {"interrupted": True}})[-1] == {  # type: ignore[index]
        "type": "response.completed",
        "status": "cancelled",
    }
    assert translator.from_provider({"setupComplete": {}}) == []


def test_every_gemini_server_message_member_is_known() -> None:
    members = {info.alias for info in genai_types.LiveServerMessage.model_fields.values()}
    assert members == GEMINI_KINDS


def test_translator_for_picks_the_provider_of_the_model() -> None:
    for model, kind in ((OPENAI, OpenAITranslator), (XAI, OpenAITranslator), (GEMINI, GeminiTranslator)):
        translator = translator_for(SessionInfo("sess_1", "proj", {}, model))
        assert isinstance(translator, kind) and translator.provider == model.provider


def test_provider_messages_are_redacted() -> None:
    message = redact("bad key sk-proj-abcdef123456 and AIzaSyA0123456789 and mine", ("mine",))
    assert message == "bad key *** and *** and ***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Incorrect API key provided: sk-****7890.", "Incorrect API key provided: ***."),
        ("Incorrect API key provided: sk-proj-********************7890", "Incorrect API key provided: ***"),
        ("key sk-...7890 refused", "key *** refused"),
        ("key sk-ab refused", "key *** refused"),
        ("key xai-****12 refused", "key *** refused"),
        ("key AIza****wxyz refused", "key *** refused"),
        ("a task-list and a disk-image", "a task-list and a disk-image"),
    ],
    ids=["masked", "masked-project", "dots", "short", "xai-masked", "gemini-masked", "words"],
)
def test_provider_messages_lose_key_fragments(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_the_strict_check_refuses_members_the_sdk_does_not_declare() -> None:
    with pytest.raises(Violation, match="temperature"):
        check_openai_client(
            json.dumps({"type": "session.update", "session": {"type": "realtime", "temperature": 1}})
        )
    with pytest.raises(Violation):
        check_gemini_client(json.dumps({"setup": {"model": "models/x", "temperature": 1}}))


# Settings and the served models --------------------------------------------------------------


def test_provider_settings_are_read_and_keys_never_shown() -> None:
    settings = Settings.from_environ(
        {
            "REALTIME_UPSTREAM": "providers",
            "REALTIME_OPENAI_API_KEY": OPENAI_KEY,
            "REALTIME_GEMINI_API_KEY": GEMINI_KEY,
            "REALTIME_XAI_URL": "ws://127.0.0.1:9/v1/realtime",
        }
    )
    assert settings.upstream == "providers" and settings.openai_api_key == OPENAI_KEY
    assert settings.openai_url == "wss://api.openai.com/v1/realtime"
    assert settings.xai_url == "ws://127.0.0.1:9/v1/realtime" and settings.xai_api_key is None
    assert settings.gemini_url.endswith("GenerativeService.BidiGenerateContent")
    shown = repr(settings)
    assert OPENAI_KEY not in shown and GEMINI_KEY not in shown and "openai_api_key=***" in shown
    assert repr(Endpoint("openai", "wss://x", OPENAI_KEY)).count(OPENAI_KEY) == 0
    with pytest.raises(SettingsError, match="REALTIME_GEMINI_URL"):
        Settings.from_environ({"REALTIME_GEMINI_URL": "https://example.com"})


def test_models_of_providers_without_a_key_are_not_served() -> None:
    settings = Settings(upstream="providers", openai_api_key=OPENAI_KEY)
    served = served_registry(settings, ModelRegistry.load())
    assert [model["id"] for model in served.to_json()] == ["openai/gpt-realtime-2"]
    with pytest.raises(UnknownModelError, match="not served by this deployment"):
        served.get("gemini/gemini-3.1-flash-live-preview")
    with pytest.raises(UnknownModelError, match="unknown realtime model"):
        served.get("acme/model")
    local = served_registry(Settings(), ModelRegistry.load())
    assert len(local.to_json()) == 4  # the local model serves every model


def test_provider_model_overrides_the_name_after_the_prefix() -> None:
    row = {name: value for name, value in OPENAI.to_json().items() if name not in ("type", "audio_format")}
    registry = ModelRegistry.load(json.dumps({"models": [{**row, "provider_model": "gpt-x"}]}))
    assert registry.get("openai/gpt-realtime-2").provider_name == "gpt-x"
    assert OPENAI.provider_name == "gpt-realtime-2"


# The adapter against the fakes, in-process -------------------------------------------------------


def _upstream(fake: FakeProvider, *, timeout: float = 5.0) -> ProvidersUpstream:
    endpoint = Endpoint(fake.kind, fake.url, fake.key, model_in_query=fake.kind == "openai")
    return ProvidersUpstream({fake.kind: endpoint}, timeout=timeout)


@pytest.mark.parametrize(
    ("mode", "key", "expected"),
    [
        ("refuse", OPENAI_KEY, "openai refused the connection (HTTP 503)"),
        ("normal", "sk-wrong-0123456789", "openai refused the connection (HTTP 401)"),
        ("mute", OPENAI_KEY, "openai did not acknowledge the session within 2 s"),
        ("reject", OPENAI_KEY, "openai refused the session: Unknown parameter: 'session.x'."),
    ],
    ids=["refused", "wrong-key", "no-acknowledgement", "error-instead"],
)
def test_start_failures_name_the_provider(mode: str, key: str, expected: str) -> None:
    async def attempt(fake: FakeProvider) -> None:
        endpoint = Endpoint("openai", fake.url, key)
        # Only the mute provider waits the timeout out; the others answer at once, however busy the
        # machine is, and are given the default timeout to do it.
        upstream = ProvidersUpstream({"openai": endpoint}, timeout=2 if mode == "mute" else 10)
        async with upstream.connect(SessionInfo("sess_1", "proj", {}, OPENAI)):
            raise AssertionError("the session started")

    with FakeProvider("openai", key=OPENAI_KEY) as fake:
        fake.mode = mode
        with pytest.raises(UpstreamError) as failure:
            asyncio.run(attempt(fake))
    assert failure.value.message == expected
    assert key not in failure.value.message


def test_a_malformed_provider_message_is_dropped_and_counted() -> None:
    counted: list[tuple[str, str]] = []
    connection = ProviderConnection(
        None,  # type: ignore[arg-type]  # _translate does no I/O
        OpenAITranslator({}, OPENAI),
        Endpoint("openai", "ws://unused", OPENAI_KEY),
        timeout=1,
        dropped=lambda provider, kind: counted.append((provider, kind)),
    )
    assert connection._translate({"type": "response.output_audio.delta"}) is None  # no `delta`
    assert connection._translate({"type": "made.up"}) is None
    assert counted == [("openai", "other"), ("openai", "other")]
    assert connection._translate({"type": "rate_limits.updated"}) is None
    assert counted[-1] == ("openai", "rate_limits.updated")


def test_an_unreachable_provider_is_an_upstream_error() -> None:
    async def attempt() -> None:
        upstream = ProvidersUpstream(
            {"openai": Endpoint("openai", "ws://127.0.0.1:9/v1", OPENAI_KEY)}, timeout=2
        )
        async with upstream.connect(SessionInfo("sess_1", "proj", {}, OPENAI)):
            raise AssertionError("the session started")

    with pytest.raises(UpstreamError, match="cannot reach openai"):
        asyncio.run(attempt())


# The fakes, proven with the official SDK clients -------------------------------------------------


def test_the_fake_openai_serves_the_official_sdk_client() -> None:
    async def converse(port: int) -> list[str]:
        client = AsyncOpenAI(api_key=OPENAI_KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
        seen: list[str] = []
        async with client.realtime.connect(model="gpt-realtime-2") as connection:
            await connection.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "tools": [
                        {
                            "type": "function",
                            "name": "get_weather",
                            "description": "Weather for a city",
                            "parameters": WEATHER["parameters"],
                        }
                    ],
                }
            )
            async for event in connection:
                seen.append(event.type)
                if event.type == "session.updated":
                    item = {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}],
                    }
                    await connection.conversation.item.create(item=item)  # type: ignore[arg-type]
                    await connection.response.create()
                if event.type == "response.done":
                    break
        await client.close()
        return seen

    with FakeProvider("openai", key=OPENAI_KEY) as fake:
        seen = asyncio.run(asyncio.wait_for(converse(fake.port), 20))
    assert fake.violations == []
    assert seen[:2] == ["session.created", "session.updated"] and seen[-1] == "response.done"
    assert "response.output_text.delta" in seen
    assert fake.requests == ["/v1/realtime?model=gpt-realtime-2"]
    assert [message["type"] for message in fake.received] == [
        "session.update",
        "conversation.item.create",
        "response.create",
    ]


def test_the_fake_gemini_serves_the_official_sdk_client(tmp_path: Path) -> None:
    server_tls, client_tls = localhost_contexts(tmp_path)

    async def converse(port: int) -> list[genai_types.LiveServerMessage]:
        client = genai.Client(
            api_key=GEMINI_KEY,
            http_options=genai_types.HttpOptions(
                base_url=f"https://127.0.0.1:{port}",
                api_version="v1beta",
                async_client_args={"ssl": client_tls},
            ),
        )
        config = genai_types.LiveConnectConfig(
            response_modalities=[genai_types.Modality.TEXT],
            system_instruction="Be brief.",
            realtime_input_config=genai_types.RealtimeInputConfig(
                automatic_activity_detection=genai_types.AutomaticActivityDetection(disabled=True)
            ),
        )
        async with client.aio.live.connect(model="gemini-3.1-flash-live-preview", config=config) as session:
            await session.send_realtime_input(text="hi")  # as Gemini 3.1 takes text mid-session
            return [message async for message in session.receive()]

    with FakeProvider("gemini", key=GEMINI_KEY, ssl_context=server_tls) as fake:
        messages = asyncio.run(asyncio.wait_for(converse(fake.port), 20))
    assert fake.violations == []
    assert messages[0].server_content is not None and messages[0].server_content.model_turn is not None
    assert messages[0].text == "echo: hi"
    assert fake.openings[0]["model"] == "models/gemini-3.1-flash-live-preview"
    assert fake.headers[0]["x-goog-api-key"] == GEMINI_KEY


def test_openai_response_statuses_reasons_and_usage() -> None:
    usage = Usage(provider="openai")
    translator = OpenAITranslator({}, OPENAI, usage=usage)
    failed = {
        "type": "response.done",
        "response": {
            "status": "failed",
            "status_details": {
                "type": "failed",
                "error": {"type": "invalid_request_error", "code": "insufficient_quota"},
            },
        },
    }
    assert translator.from_provider(failed) == [
        {
            "type": "error",
            "error": {
                "code": "upstream_error",
                "message": "openai: the response failed: insufficient_quota (invalid_request_error)",
            },
        },
        {"type": "response.completed", "status": "failed"},
    ]
    incomplete = {
        "type": "response.done",
        "response": {
            "status": "incomplete",
            "status_details": {"type": "incomplete", "reason": "content_filter"},
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        },
    }
    assert translator.from_provider(incomplete) == [
        {
            "type": "response.completed",
            "status": "incomplete",
            "reason": "content_filter",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
    ]
    assert (usage.input_tokens, usage.output_tokens) == (3, 4)
    partial = {
        "type": "conversation.item.input_audio_transcription.completed",
        "transcript": "he",
        "status": "in_progress",
    }
    assert translator.from_provider(partial) == []


def test_gemini_setup_handles_cancellations_and_usage() -> None:
    usage = Usage(provider="gemini")
    translator = GeminiTranslator({"model": GEMINI.id}, GEMINI, usage=usage)
    (opening,) = translator.opening()
    check_gemini_client(json.dumps(opening))
    assert opening["setup"]["sessionResumption"] == {}
    assert opening["setup"]["contextWindowCompression"] == {"slidingWindow": {}}
    assert translator.resumption_opening() is None  # no handle yet
    assert translator.from_provider({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}) == []
    assert (
        translator.from_provider({"sessionResumptionUpdate": {"newHandle": "h2", "resumable": False}}) == []
    )
    (resuming,) = translator.resumption_opening() or []
    check_gemini_client(json.dumps(resuming))
    assert resuming["setup"]["sessionResumption"] == {"handle": "h1"}  # the newest resumable one
    assert translator.from_provider({"goAway": {"timeLeft": "10s"}}) == [] and translator.going_away
    assert translator.resumed() == [] and not translator.going_away
    calls = {"toolCall": {"functionCalls": [{"id": "c1", "name": "f", "args": {}}]}}
    translator.from_provider(calls)
    assert translator.from_provider({"toolCallCancellation": {"ids": ["c1"]}}) == [
        {"type": "tool.cancelled", "tool_call_ids": ["c1"]}
    ]
    assert translator.to_provider({"type": "tool.result", "tool_call_id": "c1", "tool_result": "x"}) == []
    translator.from_provider({"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}})
    done = translator.from_provider(
        {
            "serverContent": {"turnComplete": True},
            "usageMetadata": {"promptTokenCount": 2, "responseTokenCount": 5},
        }
    )
    assert done == [
        {
            "type": "response.completed",
            "status": "completed",
            "usage": {"input_tokens": 2, "output_tokens": 5},
        }
    ]
    assert translator.from_provider({"usageMetadata": {"promptTokenCount": 1}}) == []
    assert (usage.input_tokens, usage.output_tokens) == (3, 5)
    (text,) = translator.to_provider({"type": "text.input", "text": "hello"})
    assert text == {"realtimeInput": {"text": "hello"}}
    with pytest.raises(UpstreamError, match="129 function calls"):
        translator.from_provider(
            {"toolCall": {"functionCalls": [{"id": str(n), "name": "f"} for n in range(129)]}}
        )


def test_a_deeply_nested_provider_frame_is_not_json_to_the_edge() -> None:
    assert decode_message("[" * 100_000 + "]" * 100_000, {}) is None
