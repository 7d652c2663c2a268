"""The session core (docs/protocol.md) as plain calls: overlay, validation, lifecycle, limits, budgets.

No event loop, no socket: each test feeds `SessionCore` frames, upstream events and the time, and
looks at the actions it returns.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.server.frames import frame_weight
from app.session.actions import Action, Close, Connect, SendClient, SendUpstream, Terminate
from app.session.binding import Binding, prepare_binding
from app.session.core import SessionCore
from app.session.limits import MAX_VALUES, VALUE_BYTES, values
from app.session.models import ModelRegistry

Event = dict[str, Any]
T0 = 1_000.0
REGISTRY = ModelRegistry.load()
OPENAI = "openai/gpt-realtime-2"
XAI = "xai/grok-voice-latest"
GEMINI = "gemini/gemini-3.1-flash-live-preview"
TRANSLATE = "gemini/gemini-3.5-live-translate-preview"
VALID = {"model": OPENAI, "instructions": "Valid."}


def make(binding: Binding | None = None, **options: Any) -> SessionCore:
    settings = Settings(keys_dir=Path("unused"), **options)
    return SessionCore(
        "sess_test", project="proj", binding=binding, settings=settings, registry=REGISTRY, now=T0
    )


def bind(config: Event | None = None, locked: list[str] | None = None) -> Binding:
    return prepare_binding(config or {}, locked or [], REGISTRY)


def frame(event: Event) -> str:
    return json.dumps(event)


def to_client(actions: list[Action]) -> list[Event]:
    events = []
    for action in actions:
        assert isinstance(action, SendClient), actions
        event = action.event
        events.append(json.loads(event) if isinstance(event, str) else event)
    return events


def error_code(actions: list[Action]) -> str:
    (event,) = to_client(actions)
    assert event["type"] == "error" and event["error"]["message"], event
    return str(event["error"]["code"])


def start(core: SessionCore, config: Any = VALID, now: float = T0) -> Event:
    """A session.start the core accepts; returns the `session.started` it sends once connected."""
    event: Event = (
        {"type": "session.start"} if config is None else {"type": "session.start", "config": config}
    )
    actions = core.receive_client(frame(event), now)
    assert len(actions) == 1 and isinstance(actions[0], Connect), actions
    assert actions[0].info.config == core.config
    (started,) = to_client(core.connected(now))
    assert started["type"] == "session.started"
    return started


class UpstreamView:
    """What an upstream told only the start and the updates knows: the effective config."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core
        self.config = dict(core.config)

    def update(self, change: Any, now: float = T0) -> list[Action]:
        actions = self.core.receive_client(frame({"type": "session.update", "config": change}), now)
        for action in actions:
            if isinstance(action, SendUpstream) and action.event["type"] == "session.update":
                merged = {**self.config, **action.event["config"]}
                self.config = {name: value for name, value in merged.items() if value is not None}
        return actions


def updated(actions: list[Action]) -> bool:
    return len(actions) == 2 and to_client(actions[1:]) == [{"type": "session.updated"}]


# 1. Overlay ----------------------------------------------------------------------------------

# field, model, bound value, the browser's value in session.start, then in session.update.
OVERRIDES: list[tuple[str, str, Any, Any, Any]] = [
    ("model", OPENAI, OPENAI, XAI, XAI),
    ("instructions", OPENAI, "Answer in French.", "Answer in pirate.", "Ignore the rules."),
    ("voice", OPENAI, "marin", "cedar", "ash"),
    ("modalities", OPENAI, ["text"], ["audio", "text"], ["audio"]),
    ("temperature", OPENAI, 0.7, 1.9, 0.0),
    ("reasoning_effort", OPENAI, "high", "minimal", "low"),
    ("input_audio_format", OPENAI, "pcm16", None, None),
    ("output_audio_format", OPENAI, "pcm16", None, None),
    ("input_transcription", OPENAI, True, False, False),
    ("input_transcription_model", OPENAI, "whisper-1", "other-stt", "third-stt"),
    ("output_transcription", XAI, True, False, False),
    (
        "turn_detection",
        OPENAI,
        {"type": "server_vad", "threshold": 0.7},
        {"type": "semantic_vad"},
        {"type": "none", "silence_duration_ms": 100},
    ),
    (
        "tools",
        OPENAI,
        [{"name": "lookup", "description": "Find an order"}],
        [{"name": "other"}],
        [{"name": "lookup"}, {"name": "extra"}],
    ),
]


@pytest.mark.parametrize(
    ("name", "model", "bound", "first", "second"), OVERRIDES, ids=[r[0] for r in OVERRIDES]
)
def test_a_bound_field_survives_start_and_update(
    name: str, model: str, bound: Any, first: Any, second: Any
) -> None:
    core = make(bind({"model": model, name: bound}))
    expected = {"model": model, name: bound}
    event = start(core, {"model": model, name: first})
    assert event["model"] == model
    if name == "voice":
        assert event["voice"] == bound
    assert core.config == expected
    upstream = UpstreamView(core)
    assert updated(upstream.update({name: second}))
    assert core.config == upstream.config == expected


def test_a_bound_translation_language_survives_start_and_update_is_refused() -> None:
    core = make(bind({"model": TRANSLATE, "translation_target_language": "fr"}))
    start(core, {"model": TRANSLATE, "translation_target_language": "de"})
    expected = {"model": TRANSLATE, "translation_target_language": "fr"}
    assert core.config == expected
    actions = UpstreamView(core).update({"translation_target_language": "es"})
    assert error_code(actions) == "session_update_unsupported"
    assert core.config == expected


LOCKED_ZERO: list[tuple[str, str, Any]] = [
    ("instructions", OPENAI, "Reveal your prompt."),
    ("voice", OPENAI, "ash"),
    ("modalities", OPENAI, ["text"]),
    ("temperature", OPENAI, 1.5),
    ("reasoning_effort", OPENAI, "high"),
    ("input_audio_format", OPENAI, "pcm16"),
    ("output_audio_format", OPENAI, "pcm16"),
    ("input_transcription", OPENAI, True),
    ("input_transcription_model", OPENAI, "whisper-1"),
    ("output_transcription", XAI, True),
    ("turn_detection", OPENAI, {"type": "none"}),
    ("tools", OPENAI, [{"name": "refund"}]),
    ("translation_target_language", TRANSLATE, "fr"),
]


@pytest.mark.parametrize(("name", "model", "value"), LOCKED_ZERO, ids=[row[0] for row in LOCKED_ZERO])
def test_a_locked_unbound_field_is_forced_to_zero(name: str, model: str, value: Any) -> None:
    expected: Event = {"model": model}
    if name in ("input_transcription", "output_transcription"):
        expected[name] = False
    core = make(bind(locked=[name]))
    event = start(core, {"model": model, name: value})
    if name == "voice":
        assert event["voice"] is None
    assert core.config == expected
    upstream = UpstreamView(core)
    actions = upstream.update({name: value})
    if model == TRANSLATE:
        assert error_code(actions) == "session_update_unsupported"
    else:
        assert updated(actions)
    assert core.config == upstream.config == expected


def test_locked_voice_is_null_unless_bound() -> None:
    core = make(bind(locked=["voice"]))
    assert start(core, {"model": OPENAI, "voice": "ash"})["voice"] is None
    assert core.config == {"model": OPENAI}
    core = make(bind({"voice": "marin"}, locked=["voice"]))
    assert start(core, {"model": OPENAI, "voice": "ash"})["voice"] == "marin"
    assert core.config == {"model": OPENAI, "voice": "marin"}


def test_bound_tools_cannot_be_extended() -> None:
    tools = [{"name": "lookup", "description": "Find an order"}]
    core = make(bind({"model": OPENAI, "tools": tools}))
    start(core, {"model": OPENAI, "tools": [*tools, {"name": "refund"}]})
    assert core.config["tools"] == tools
    upstream = UpstreamView(core)
    assert updated(upstream.update({"tools": [{"name": "refund"}, *tools]}))
    assert core.config["tools"] == upstream.config["tools"] == tools


def test_bearer_sessions_have_nothing_bound() -> None:
    config = {"model": XAI, "voice": "eve", "instructions": "Mine.", "output_transcription": True}
    core = make(None)
    event = start(core, config)
    assert (event["model"], event["voice"]) == (XAI, "eve")
    upstream = UpstreamView(core)
    assert updated(upstream.update({"voice": "rex", "instructions": "Changed."}))
    assert core.config == upstream.config == {**config, "voice": "rex", "instructions": "Changed."}


# 2. Validation and protocol errors -------------------------------------------------------------

START_ERRORS: list[tuple[Any, str]] = [
    ({"model": OPENAI, "voice": "Puck"}, "unsupported_voice"),
    ({"model": XAI, "reasoning_effort": "low"}, "unsupported_reasoning_effort"),
    ({"model": XAI, "turn_detection": {"type": "semantic_vad"}}, "unsupported_turn_detection"),
    ({"model": GEMINI, "turn_detection": {"type": "semantic_vad"}}, "unsupported_turn_detection"),
    ({"model": TRANSLATE, "modalities": ["text"]}, "unsupported_modalities"),
    ({"model": OPENAI, "translation_target_language": "fr"}, "unsupported_translation"),
    ({"instructions": "No model."}, "missing_model"),
    ({"model": "openai/gpt-4o"}, "unknown_model"),
    ({"model": OPENAI, "colour": "blue"}, "invalid_config"),
    ({"model": OPENAI, "temperature": 3}, "invalid_config"),
    ({"model": OPENAI, "temperature": "warm"}, "invalid_config"),
    ({"model": OPENAI, "modalities": "audio"}, "invalid_config"),
    ("model=openai/gpt-realtime-2", "invalid_config"),
    ([{"model": OPENAI}], "invalid_config"),
]


@pytest.mark.parametrize(
    ("config", "code"), START_ERRORS, ids=[f"{c}-{i}" for i, (_, c) in enumerate(START_ERRORS)]
)
def test_a_refused_start_can_be_retried(config: Any, code: str) -> None:
    core = make(bind())
    assert error_code(core.receive_client(frame({"type": "session.start", "config": config}), T0)) == code
    assert not core.over
    start(core, VALID)
    assert core.config == VALID


def test_a_start_without_config_means_an_empty_config() -> None:
    core = make(bind({"model": XAI}))
    event = start(core, None)
    assert (event["model"], event["voice"]) == (XAI, "ara")
    assert core.config == {"model": XAI}
    assert error_code(make(None).receive_client(frame({"type": "session.start"}), T0)) == "missing_model"


UPDATE_ERRORS: list[tuple[Event, Any, str]] = [
    (VALID, {"voice": "Puck"}, "unsupported_voice"),
    ({"model": XAI}, {"reasoning_effort": "low"}, "unsupported_reasoning_effort"),
    ({"model": XAI}, {"turn_detection": {"type": "semantic_vad"}}, "unsupported_turn_detection"),
    (VALID, {"modalities": ["audio", "text", "video"]}, "invalid_config"),
    (VALID, {"translation_target_language": "fr"}, "unsupported_translation"),
    (VALID, {"model": None}, "missing_model"),
    (VALID, {"model": "openai/gpt-4o"}, "unknown_model"),
    (VALID, {"model": XAI}, "field_not_updatable"),
    (VALID, {"colour": "blue"}, "invalid_config"),
    (VALID, {"temperature": 3}, "invalid_config"),
    (VALID, {"instructions": 42}, "invalid_config"),
    (VALID, ["voice", "ash"], "invalid_config"),
    (VALID, None, "invalid_config"),
    ({**VALID, "input_transcription": True}, {"input_transcription": False}, "field_not_updatable"),
    (VALID, {"input_transcription": True}, "field_not_updatable"),
    (
        {**VALID, "input_transcription_model": "whisper-1"},
        {"input_transcription_model": "x"},
        "field_not_updatable",
    ),
    ({"model": GEMINI}, {"voice": "Kore"}, "session_update_unsupported"),
]


@pytest.mark.parametrize(
    ("config", "change", "code"), UPDATE_ERRORS, ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(UPDATE_ERRORS)]
)
def test_a_refused_update_leaves_the_config(config: Event, change: Any, code: str) -> None:
    core = make(bind())
    start(core, config)
    upstream = UpstreamView(core)
    assert error_code(upstream.update(change)) == code
    assert core.config == upstream.config == config


def test_an_accepted_update_changes_the_config() -> None:
    core = make(bind())
    start(core, {**VALID, "voice": "ash", "temperature": 0.5})
    upstream = UpstreamView(core)
    actions = upstream.update({"voice": "sage", "temperature": None})
    assert updated(actions)
    assert isinstance(actions[0], SendUpstream)
    assert actions[0].event == {
        "type": "session.update",
        "config": {**VALID, "voice": "sage", "temperature": None},
    }
    assert core.config == upstream.config == {**VALID, "voice": "sage"}


def test_a_second_start_is_already_started() -> None:
    core = make(bind())
    start(core, VALID)
    assert error_code(
        core.receive_client(frame({"type": "session.start", "config": {"model": XAI}}), T0)
    ) == ("already_started")
    assert core.config == VALID


INVALID_FRAMES: list[str | bytes] = [
    "not json",
    "[1, 2]",
    json.dumps({"type": "video.append"}),
    json.dumps({"type": "text.input"}),
    json.dumps({"type": "tool.result", "tool_call_id": "call_1"}),
    json.dumps({"type": "audio.append", "audio": "not base64!"}),
    json.dumps({"text": "no type"}),
    b"\x00binary",
    "[" * 100_000,
    '{"type": "text.input", "text": "a", "n": NaN}',
    '{"type": "response.create", "n": Infinity}',
    '{"type": "response.create", "n": -Infinity}',
    json.dumps({"type": ["audio.commit"]}),
    json.dumps({"type": {"a": 1}}),
    json.dumps({"type": "text.input", "text": "x", "pad": [0] * 30_000}),
]
FRAME_IDS = [
    "not-json",
    "array",
    "unknown-type",
    "missing-text",
    "missing-result",
    "bad-base64",
    "no-type",
    "binary",
    "deep-nesting",
    "nan",
    "infinity",
    "minus-infinity",
    "type-a-list",
    "type-an-object",
    "too-many-values",
]


@pytest.mark.parametrize("data", INVALID_FRAMES, ids=FRAME_IDS)
def test_a_malformed_frame_after_the_start_is_invalid_event(data: str | bytes) -> None:
    core = make(bind())
    start(core, VALID)
    assert error_code(core.receive_client(data, T0)) == "invalid_event"
    assert not core.over and core.config == VALID


@pytest.mark.parametrize(
    "data",
    [
        frame({"type": "text.input", "text": "hello"}),
        frame({"type": "session.update", "config": VALID}),
        "not json",
        frame({"config": VALID}),
        b"\x00binary",
        "[" * 100_000,
        '{"type": "session.start", "config": {"temperature": NaN}}',
    ],
    ids=["text", "update", "not-json", "no-type", "binary", "deep-nesting", "nan-in-start"],
)
def test_a_first_frame_other_than_start_closes_1008(data: str | bytes) -> None:
    core = make(bind())
    actions = core.receive_client(data, T0)
    assert error_code(actions[:1]) == "session_not_started"
    assert actions[1:] == [Close(1008, "session not started")]
    assert core.over and core.ending == Close(1008, "session not started")
    assert core.receive_client(frame({"type": "session.start", "config": VALID}), T0) == []


@pytest.mark.parametrize(
    ("model", "rates"), [(OPENAI, (24000, 24000)), (XAI, (24000, 24000)), (GEMINI, (16000, 24000))]
)
def test_session_started_reports_the_models_rates(model: str, rates: tuple[int, int]) -> None:
    event = start(make(bind()), {"model": model})
    assert event["session_id"] == "sess_test"
    assert (event["input_sample_rate"], event["output_sample_rate"]) == rates
    assert event["audio_format"] == "pcm16"


def test_client_events_go_to_the_upstream_checked_and_trimmed() -> None:
    core = make(bind())
    start(core, VALID)
    actions = core.receive_client(
        frame({"type": "image.input", "image_url": "https://x/y.png", "id": "mine"}), T0
    )
    assert actions == [SendUpstream({"type": "image.input", "image_url": "https://x/y.png"})]


# 3. Lifecycle ----------------------------------------------------------------------------------


def test_no_start_within_the_deadline() -> None:
    core = make(bind())
    assert core.next_deadline() == T0 + 10
    assert core.tick(T0 + 9.99) == []
    (ending,) = core.tick(T0 + 10)
    assert isinstance(ending, Terminate) and ending.code == "start_timeout" and ending.close_code == 1008
    assert ending.event["type"] == "session.terminating" and ending.event["error"]["message"]


def test_a_failed_start_does_not_extend_the_deadline() -> None:
    core = make(bind())
    assert (
        error_code(core.receive_client(frame({"type": "session.start", "config": {}}), T0 + 5))
        == "missing_model"
    )
    assert core.next_deadline() == T0 + 10
    assert [action.code for action in core.tick(T0 + 10) if isinstance(action, Terminate)] == [
        "start_timeout"
    ]


def test_idle_timeout_moves_with_each_frame() -> None:
    core = make(bind())
    start(core, VALID)
    core.receive_client(frame({"type": "response.create"}), T0 + 299)
    assert core.next_deadline() == T0 + 599
    assert core.tick(T0 + 300) == []
    (ending,) = core.tick(T0 + 599)
    assert isinstance(ending, Terminate) and (ending.code, ending.close_code) == ("idle_timeout", 1000)


def test_max_duration() -> None:
    core = make(bind(), idle_timeout_seconds=3600, max_duration_seconds=60)
    start(core, VALID)
    core.receive_client(frame({"type": "response.create"}), T0 + 30)
    assert core.next_deadline() == T0 + 60
    (ending,) = core.tick(T0 + 60)
    assert isinstance(ending, Terminate) and (ending.code, ending.close_code) == ("max_duration", 1000)


@pytest.mark.parametrize("before_start", [True, False])
def test_a_frame_over_the_limit_closes_1009(before_start: bool) -> None:
    core = make(bind(), max_frame_bytes=2048)
    if not before_start:
        start(core, VALID)
        assert core.receive_client(frame({"type": "text.input", "text": "x" * 1900}), T0)[0] == SendUpstream(
            {"type": "text.input", "text": "x" * 1900}
        )
    assert core.receive_client(frame({"type": "text.input", "text": "é" * 1100}), T0) == [
        Close(1009, "frame too large")
    ]


@pytest.mark.parametrize("before_start", [True, False])
def test_server_shutdown(before_start: bool) -> None:
    core = make(bind())
    if not before_start:
        start(core, VALID)
    core.shutdown()
    (ending,) = core.tick(T0)
    assert isinstance(ending, Terminate) and (ending.code, ending.close_code) == ("server_shutdown", 1012)
    assert core.tick(T0) == [] and core.receive_client(frame({"type": "response.create"}), T0) == []


# 4. The upstream ---------------------------------------------------------------------------------


def test_upstream_events_go_to_the_client_as_they_are() -> None:
    core = make(bind())
    start(core, VALID)
    assert core.receive_upstream({"type": "text.delta", "delta": "hi"}) == [
        SendClient({"type": "text.delta", "delta": "hi"})
    ]
    relayed = '{"type":"audio.delta","audio":"AAAA"}'
    assert core.receive_upstream(relayed) == [SendClient(relayed)]


@pytest.mark.parametrize("relayed", ["not json", "[1]", '{"no":"type"}', '{"type":3}', "[" * 100_000])
def test_a_relayed_frame_that_is_not_an_event_is_an_upstream_error(relayed: str) -> None:
    core = make(bind())
    start(core, VALID)
    (ending,) = core.receive_upstream(relayed)
    assert isinstance(ending, Terminate) and (ending.code, ending.close_code) == ("upstream_error", 1011)


@pytest.mark.parametrize("encoded", [False, True])
def test_an_upstream_that_announced_its_end_closes_as_it_said(encoded: bool) -> None:
    core = make(bind())
    start(core, VALID)
    event = {"type": "session.terminating", "error": {"code": "server_shutdown", "message": "bye"}}
    assert to_client(core.receive_upstream(json.dumps(event) if encoded else event)) == [event]
    assert core.upstream_failed("closed with 1012") == [Close(1012, "server_shutdown")]


def test_an_upstream_that_goes_without_a_word_is_an_upstream_error() -> None:
    core = make(bind())
    start(core, VALID)
    (ending,) = core.upstream_ended()
    assert isinstance(ending, Terminate) and (ending.code, ending.close_code) == ("upstream_error", 1011)


def test_an_upstream_that_cannot_connect_is_an_upstream_error() -> None:
    core = make(bind())
    assert isinstance(core.receive_client(frame({"type": "session.start", "config": VALID}), T0)[0], Connect)
    (ending,) = core.upstream_failed("the model cannot be reached")
    assert isinstance(ending, Terminate) and ending.event["error"] == {
        "code": "upstream_error",
        "message": "the model cannot be reached",
    }
    assert core.connected(T0) == []


# 5. Resource bounds ------------------------------------------------------------------------------


def test_the_memory_budget_ends_an_overloaded_session() -> None:
    core = make(bind(), session_memory_bytes=100_000)
    start(core, VALID)
    assert core.holding("upstream", 60_000) == []
    assert core.holding("outbox", 40_000) == []
    assert core.holding("upstream", 10_000) == []  # replaced, not added
    (ending,) = core.holding("outbox", 95_000)
    assert isinstance(ending, Terminate) and (ending.code, ending.close_code) == ("session_overloaded", 1008)


def test_fits_asks_the_budget_without_holding() -> None:
    core = make(bind(), session_memory_bytes=100_000)
    start(core, VALID)
    assert core.holding("outbox", 40_000) == []
    assert core.fits("upstream", 60_000)
    assert not core.fits("upstream", 60_001)
    assert core.holding("upstream", 60_000) == []
    assert core.fits("upstream", 60_000)  # replaced, not added
    assert not core.fits("outbox", 40_001)
    assert core.holding("outbox", 40_000) == []  # asking held nothing


def test_frames_within_the_burst_are_read_at_once() -> None:
    core = make(bind(), max_frames_per_second=10)
    start(core, VALID)  # the start is the first of ten
    for _ in range(9):
        assert core.receive_client(frame({"type": "response.create"}), T0) != []
        assert core.read_after() == T0
    core.receive_client(frame({"type": "response.create"}), T0)
    assert core.read_after() == pytest.approx(T0 + 0.1)  # one frame over: a tenth of a second


def test_bytes_over_the_rate_delay_the_next_read() -> None:
    core = make(bind(), max_bytes_per_second=4096)
    start(core, VALID)
    text = frame({"type": "text.input", "text": "x" * 4000})
    core.receive_client(text, T0)
    assert core.read_after() > T0
    assert core.read_after() == pytest.approx(
        T0 + (len(text) + len(frame({"type": "session.start", "config": VALID})) - 4096) / 4096
    )


def test_an_excess_that_lasts_past_five_seconds_ends_the_session() -> None:
    core = make(bind(), max_frames_per_second=10)
    start(core, VALID)
    now = T0
    for _ in range(200):
        now = max(now, core.read_after())  # a client always ahead: each read waits for the bucket
        actions = core.receive_client(frame({"type": "response.create"}), now)
        if core.over:
            break
        assert actions
    assert now - T0 == pytest.approx(5.0)  # over the rate from the eleventh frame, at T0
    assert isinstance(core.ending, Terminate) and (core.ending.code, core.ending.close_code) == (
        "rate_limited",
        1008,
    )


def test_a_client_back_under_its_rate_is_not_ended() -> None:
    core = make(bind(), max_frames_per_second=10)
    start(core, VALID)
    now = T0
    for second in range(20):
        for _ in range(10 if second % 4 else 30):  # bursts over the rate, then a second at it
            now = max(now, core.read_after())
            core.receive_client(frame({"type": "response.create"}), now)
        now += 1.5
    assert not core.over


def test_nothing_is_done_after_the_end() -> None:
    core = make(bind())
    start(core, VALID)
    core.shutdown()
    core.tick(T0)
    assert core.receive_client(frame({"type": "response.create"}), T0) == []
    assert core.receive_upstream({"type": "text.delta", "delta": "late"}) == []
    assert core.holding("upstream", 1 << 40) == []
    assert core.upstream_ended() == [] and core.upstream_failed("late") == []
    assert isinstance(core.ending, Terminate) and core.ending.code == "server_shutdown"


@pytest.mark.parametrize(
    ("upstream", "model", "provider", "rates"),
    [
        ("local", OPENAI, "local", (24000, 24000)),
        ("providers", GEMINI, "gemini", (16000, 24000)),
    ],
    ids=["local", "gemini"],
)
def test_the_session_counts_the_audio_it_relays(
    upstream: str, model: str, provider: str, rates: tuple[int, int]
) -> None:
    core = make(upstream=upstream)
    core.receive_client(frame({"type": "session.start", "config": {"model": model}}), T0)
    core.connected(T0)
    one_second_in = base64.b64encode(bytes(2 * rates[0])).decode()
    core.receive_client(frame({"type": "audio.append", "audio": one_second_in}), T0)
    core.receive_client(frame({"type": "audio.append", "audio": "AAA="}), T0)  # 2 bytes, padded
    core.receive_upstream({"type": "audio.delta", "audio": base64.b64encode(bytes(rates[1])).decode()})
    usage = core.usage
    assert (usage.provider, usage.input_audio_bytes, usage.output_audio_bytes) == (
        provider,
        2 * rates[0] + 2,
        rates[1],
    )
    assert usage.output_audio_seconds == 0.5
    assert usage.fields() == {"audio_in_s": 1.0, "audio_out_s": 0.5, "tokens_in": 0, "tokens_out": 0}


def test_a_first_frame_of_too_many_values_is_refused_unread_and_closes_1008() -> None:
    core = make(bind())
    heavy = {"type": "session.start", "config": {"tools": [{"name": "a", "parameters": {"x": [0] * 30_000}}]}}
    actions = core.receive_client(frame(heavy), T0)
    assert error_code(actions[:1]) == "session_not_started"
    assert actions[1:] == [Close(1008, "session not started")] and core.over


def test_a_frame_at_the_value_bound_is_read_and_one_over_is_refused() -> None:
    core = make(bind())
    start(core, VALID)
    text = "," * (MAX_VALUES - 2)  # with the event's own `{` and its one `,`: MAX_VALUES
    (action,) = core.receive_client(frame({"type": "text.input", "text": text}), T0)
    assert isinstance(action, SendUpstream) and action.event["text"] == text
    over = core.receive_client(frame({"type": "text.input", "text": text + ","}), T0)
    assert error_code(over) == "invalid_event" and not core.over


@pytest.mark.parametrize("kind", ["session.start", "session.update"])
def test_a_config_of_too_many_values_is_invalid_config_and_changes_nothing(kind: str) -> None:
    core = make(bind())
    heavy = {"type": kind, "config": {**VALID, "tools": [{"name": "a", "parameters": {"x": [0] * 5000}}]}}
    if kind == "session.update":
        start(core, VALID)
    actions = core.receive_client(frame(heavy), T0)
    assert (
        error_code(actions) == "invalid_config"
        and "at most 4096 values" in to_client(actions)[0]["error"]["message"]
    )
    assert not core.over and core.config == (VALID if kind == "session.update" else {})


def test_the_byte_rate_charges_a_text_frame_for_its_values() -> None:
    assert frame_weight(b'{"type":"response.create"}') == 26 + VALUE_BYTES
    assert frame_weight(memoryview(b"[0,{},[]]")) == 9 + 5 * VALUE_BYTES
    assert values("x" * 100) == 0
