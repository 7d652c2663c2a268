"""Providers on their bad days, for real: a uvicorn edge in front of fakes that fail, go away and go quiet.

Failed and incomplete responses, failed transcriptions, xAI's own session shape and partial
transcripts, Gemini's `goAway` and resumption handles, cancelled tool calls, a provider that stops
answering, usage in `/metrics` and the session-end log line, and provider frames that would expand
or recurse past the session's bounds. The fakes check every message the edge sends against the SDK
types and send only messages those types accept (one deliberate exception: `nest deeply`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.polling import poll
from tests.provider_sessions import (
    GEMINI,
    OPENAI,
    WEATHER,
    XAI,
    Deployment,
    Event,
    ask,
    assert_terminated,
    deployed,
    pcm,
    receive,
    receive_until,
    send,
    session,
    start,
    text_of,
)

RESUMES = 3  # REALTIME_UPSTREAM_RESUMES for this edge: three goAways survive, a fourth does not
BUDGET = 2 << 20  # REALTIME_SESSION_MEMORY_BYTES for this edge
SILENCE = 5  # REALTIME_UPSTREAM_RESPONSE_TIMEOUT_SECONDS: long enough for a loaded machine's fakes


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp_path = tmp_path_factory.mktemp("fidelity")
    with deployed(
        tmp_path,
        REALTIME_UPSTREAM_TIMEOUT_SECONDS="5",
        REALTIME_UPSTREAM_RESPONSE_TIMEOUT_SECONDS=str(SILENCE),
        REALTIME_UPSTREAM_RESUMES=str(RESUMES),
        REALTIME_SESSION_MEMORY_BYTES=str(BUDGET),
    ) as running:
        yield running
        log = running.edge.log()
    assert "Traceback" not in log and "ERROR" not in log


def metric(deployment: Deployment, name: str, labels: str) -> float:
    text = httpx.get(deployment.edge.url + "/metrics", timeout=10).text
    match = re.search(rf"^{name}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# Failed and incomplete responses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "text", "code"),
    [
        (OPENAI, "use up the quota", "insufficient_quota"),
        (OPENAI, "hit the rate limit", "rate_limit_exceeded"),
        (XAI, "use up the quota", "insufficient_quota"),
    ],
    ids=["openai-quota", "openai-rate-limit", "xai-quota"],
)
def test_a_failed_response_is_an_error_and_a_failed_completion(
    fidelity: Deployment, model: str, text: str, code: str
) -> None:
    provider = model.partition("/")[0]
    with session(fidelity) as ws:
        start(ws, {"model": model, "modalities": ["text"]})
        events = ask(ws, text)
        error = next(event for event in events if event["type"] == "error")
        assert error["error"]["code"] == "upstream_error"
        assert error["error"]["message"].startswith(f"{provider}: the response failed: {code}")
        assert events.index(error) < len(events) - 1
        assert events[-1] == {"type": "response.completed", "status": "failed"}
        assert text_of(ask(ws, "still here")) == "echo: still here"  # not fatal


def test_an_incomplete_response_says_why_and_what_it_used(fidelity: Deployment) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": OPENAI, "modalities": ["text"]})
        events = ask(ws, "run out of tokens")
        assert text_of(events) == "I was about"
        assert events[-1] == {
            "type": "response.completed",
            "status": "incomplete",
            "reason": "max_output_tokens",
            "usage": {"input_tokens": 11, "output_tokens": 7},
        }
        assert ask(ws, "hello")[-1]["usage"] == {"input_tokens": 11, "output_tokens": 7}


def test_a_failed_transcription_is_a_non_fatal_error(fidelity: Deployment) -> None:
    fidelity.openai.mode = "transcription_fails"
    try:
        with session(fidelity) as ws:
            start(ws, {"model": OPENAI, "input_transcription": True})
            send(ws, {"type": "audio.append", "audio": pcm(100, 24000)})
            send(ws, {"type": "audio.commit"})
            events = [receive(ws) for _ in range(3)]
            error = events[-1]
            assert [event["type"] for event in events] == ["speech.started", "speech.stopped", "error"]
            assert error["error"]["code"] == "upstream_error"
            assert error["error"]["message"] == "openai: input audio transcription failed: no speech found"
    finally:
        fidelity.openai.mode = "normal"


# xAI ---------------------------------------------------------------------------------------------


def test_xai_gets_its_shape_and_one_transcript_per_turn(fidelity: Deployment) -> None:
    fake = fidelity.xai
    with session(fidelity) as ws:
        start(ws, {"model": XAI, "voice": "rex", "turn_detection": {"type": "none"}})
        opening = fake.openings[-1]
        assert opening["voice"] == "rex" and opening["turn_detection"] is None  # manual turns
        assert "voice" not in opening["audio"]["output"]
        send(ws, {"type": "audio.append", "audio": pcm(200, 24000)})
        send(ws, {"type": "audio.commit"})
        send(ws, {"type": "response.create"})
        events = receive_until(ws, "response.completed")
        committed = [event for event in events if event["type"] == "transcript.committed"]
        assert committed == [{"type": "transcript.committed", "transcript": "heard 9600 bytes"}]


def test_xai_text_only_output_is_its_transcript(fidelity: Deployment) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": XAI, "modalities": ["text"]})
        events = ask(ws, "hello grok")
        assert text_of(events) == "echo: hello grok"
        assert "audio.delta" not in [event["type"] for event in events]


# Gemini: resumption ------------------------------------------------------------------------------


def test_gemini_survives_three_go_aways_and_keeps_its_conversation(fidelity: Deployment) -> None:
    fake = fidelity.gemini
    before = metric(fidelity, "realtime_upstream_resumptions_total", 'provider="gemini"')
    resumed_before = len(fake.resumed_with)
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        setup = fake.openings[-1]
        assert setup["sessionResumption"] == {}
        assert setup["contextWindowCompression"] == {"slidingWindow": {}}
        assert text_of(ask(ws, "first")) == "echo: first"
        for turn in range(1, 4):
            events = ask(ws, f"go away {turn}")
            assert text_of(events) == f"echo: go away {turn}"
            assert "error" not in [event["type"] for event in events]
        answer = ask(ws, "what did I say")
        assert text_of(answer) == "you said: first | go away 1 | go away 2 | go away 3"
        assert [event["type"] for event in answer] == ["response.started", "text.delta", "response.completed"]
    handles = fake.resumed_with[resumed_before:]
    assert len(handles) == 3
    for handle, opening in zip(handles, fake.openings[-3:], strict=True):
        assert opening["sessionResumption"] == {"handle": handle}
        assert {name: value for name, value in opening.items() if name != "sessionResumption"} == {
            name: value for name, value in setup.items() if name != "sessionResumption"
        }
    poll(
        lambda: metric(fidelity, "realtime_upstream_resumptions_total", 'provider="gemini"') == before + 3,
        "three resumptions counted",
    )
    assert (
        len(
            re.findall(
                r"INFO .*gemini announced the end of its connection \(goAway\); resumed", fidelity.edge.log()
            )
        )
        >= 3
    )


def test_gemini_close_with_a_handle_is_resumed(fidelity: Deployment) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        assert text_of(ask(ws, "drop the line")) == "echo: drop the line"
        assert text_of(ask(ws, "what did I say")) == "you said: drop the line"


def test_gemini_resumptions_past_the_limit_end_the_session(fidelity: Deployment) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        for turn in range(RESUMES):
            ask(ws, f"go away {turn}")
        send(ws, {"type": "text.input", "text": "go away once more"})
        assert_terminated(
            ws, rf"^gemini announced the end .*: the session was resumed {RESUMES} times already$"
        )


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("refuse_resume", r"^resuming the session failed: gemini closed the connection .*1008"),
        ("mute_resume", r"^gemini did not acknowledge the resumed session within 5 s$"),
    ],
    ids=["refused", "not-acknowledged"],
)
def test_gemini_failed_resumption_ends_the_session(fidelity: Deployment, mode: str, message: str) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        fidelity.gemini.mode = mode
        try:
            send(ws, {"type": "text.input", "text": "go away"})
            assert_terminated(ws, message)
        finally:
            fidelity.gemini.mode = "normal"


def test_events_held_while_resuming_count_against_the_budget(fidelity: Deployment) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        fidelity.gemini.mode = "mute_resume"  # the resumption waits: what the browser sends is held
        try:
            assert text_of(ask(ws, "go away")) == "echo: go away"
            chunk = {"type": "audio.append", "audio": pcm(8000, 16000)}  # 341 KB a frame
            for _ in range(3 * BUDGET // len(chunk["audio"])):
                send(ws, chunk)
            event = receive(ws)
            assert event["type"] == "session.terminating", event
            assert event["error"]["code"] == "session_overloaded"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        finally:
            fidelity.gemini.mode = "normal"


# Gemini: tools, and messages past the bounds -----------------------------------------------------


def test_gemini_cancelled_tool_call_and_its_late_result(fidelity: Deployment) -> None:
    fake = fidelity.gemini
    with session(fidelity, ticket=fidelity.mint({"model": GEMINI, "tools": [WEATHER]})) as ws:
        start(ws, {"modalities": ["text"]})
        events = ask(ws, "cancel get_weather")
        call = next(event for event in events if event["type"] == "tool.call")
        assert receive(ws) == {"type": "tool.cancelled", "tool_call_ids": [call["tool_call_id"]]}
        responses = len(fake.of_type("toolResponse"))
        send(ws, {"type": "tool.result", "tool_call_id": call["tool_call_id"], "tool_result": "late"})
        events = ask(ws, "still here")  # no error came before the answer
        assert [event["type"] for event in events] == ["response.started", "text.delta", "response.completed"]
        assert len(fake.of_type("toolResponse")) == responses


def test_a_tool_call_frame_of_38000_calls_ends_the_session(fidelity: Deployment) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        send(ws, {"type": "text.input", "text": "many calls"})
        assert_terminated(ws, r"^gemini sent a toolCall of 38000 function calls \(at most 128\)$")


@pytest.mark.parametrize("model", [OPENAI, GEMINI], ids=["openai", "gemini"])
def test_a_deeply_nested_frame_mid_session_ends_the_session_cleanly(fidelity: Deployment, model: str) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": model, "modalities": ["text"]})
        send(ws, {"type": "text.input", "text": "nest deeply"})
        send(ws, {"type": "response.create"})
        assert_terminated(ws, rf"^{model.partition('/')[0]} sent a frame that is not a JSON object$")


def test_a_deeply_nested_frame_at_the_start_ends_the_session_cleanly(fidelity: Deployment) -> None:
    fidelity.gemini.mode = "nest"
    try:
        with session(fidelity) as ws:
            send(ws, {"type": "session.start", "config": {"model": GEMINI}})
            assert_terminated(ws, r"^gemini sent a frame that is not a JSON object$")
    finally:
        fidelity.gemini.mode = "normal"


# Silence -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [OPENAI, GEMINI], ids=["openai", "gemini"])
def test_a_provider_that_stops_answering_ends_the_session(fidelity: Deployment, model: str) -> None:
    with session(fidelity) as ws:
        start(ws, {"model": model, "modalities": ["text"]})
        send(ws, {"type": "text.input", "text": "go silent"})
        send(ws, {"type": "response.create"})
        assert_terminated(
            ws, rf"the provider stopped answering \(nothing for {SILENCE} s after an answer was asked for\)$"
        )


# Usage -------------------------------------------------------------------------------------------


def test_usage_reaches_the_metrics_and_the_session_end_line(fidelity: Deployment) -> None:
    labels = 'direction="{}",project="proj_providers",provider="openai"'
    audio_before = metric(fidelity, "realtime_audio_seconds_total", labels.format("input"))
    tokens_before = metric(fidelity, "realtime_provider_tokens_total", labels.format("output"))
    with session(fidelity) as ws:
        start(ws, {"model": OPENAI})
        send(ws, {"type": "audio.append", "audio": pcm(500, 24000)})
        send(ws, {"type": "audio.commit"})
        send(ws, {"type": "response.create"})
        events: list[Event] = receive_until(ws, "response.completed")
        assert events[-1]["usage"] == {"input_tokens": 11, "output_tokens": 7}
    poll(
        lambda: (
            metric(fidelity, "realtime_audio_seconds_total", labels.format("input")) == audio_before + 0.5
        ),
        "half a second of input audio counted",
    )
    assert metric(fidelity, "realtime_provider_tokens_total", labels.format("output")) == tokens_before + 7
    assert metric(fidelity, "realtime_audio_seconds_total", labels.format("output")) > 0  # 20 ms an answer
    assert re.search(
        r"session ended session_id=sess_\S+ tid=\S+ project=\S+ code=client_gone provider=openai "
        r"duration_s=\S+ audio_in_s=0\.5 audio_out_s=0\.02 tokens_in=11 tokens_out=7",
        fidelity.edge.log(),
    )


def test_usage_of_a_gemini_session_counts_its_usage_metadata(fidelity: Deployment, tmp_path: Path) -> None:
    labels = 'direction="input",project="proj_providers",provider="gemini"'
    before = metric(fidelity, "realtime_provider_tokens_total", labels)
    with session(fidelity) as ws:
        start(ws, {"model": GEMINI, "modalities": ["text"]})
        assert ask(ws, "count me")[-1]["usage"] == {"input_tokens": 5, "output_tokens": 7}
    poll(
        lambda: metric(fidelity, "realtime_provider_tokens_total", labels) == before + 5,
        "prompt tokens counted",
    )
