"""Fake model providers: real WebSocket servers on 127.0.0.1 speaking OpenAI Realtime or Gemini Live.

Each checks the auth header, checks EVERY message the edge sends against the provider SDK's types
(`tests.provider_types`; a violation is recorded and closes the connection with 1008), and sends
only messages that parse as the SDK's server types. A small script drives the answers: a text
naming a session tool gets a tool call; `provoke error`, `close the socket`, `stop reading` and
`keep talking` exercise failures and cancel; anything else is echoed (`echo: <text>`).

The providers' bad days, by text: `use up the quota` and `hit the rate limit` (a `failed` response,
`insufficient_quota` / `rate_limit_exceeded`), `run out of tokens` (`incomplete`), `go silent`
(nothing at all), and for Gemini `go away` (`goAway`, then a close), `drop the line` (a close while
a resumable handle is held), `cancel get_weather` (a tool call, then its cancellation), `many calls`
(one ~1 MB `toolCall` of 38,000 calls), `nest deeply` (a frame nested past any parser's stack: the
one message deliberately not valid). The fake Gemini issues a resumption handle after each setup and
turn and keeps each session's conversation under it: `what did I say` lists it. `kind="xai"` speaks
xAI's shape: its session checked by xAI's documented members, partial input transcripts
(`status: "in_progress"`) before the final one. `mode`: `transcription_fails`, `no_handles` (Gemini
issues none), `refuse_resume` (Gemini refuses a setup with a handle), `mute_resume` (it never
acknowledges one), `nest` (Gemini answers the
setup with `nest deeply`'s frame).

`echo=True` (the bench): every audio chunk is answered at once by an audio delta of the same bytes,
and messages are not checked (the bench measures the edge, not the checker). A frame of this
protocol (`session.start`, `audio.append`) gets the same answer in this protocol: the pass-through
floor of the bench relays those unchanged.

`python -m tests.fake_providers --kind openai --key K [--echo] [--port N]` serves one and prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.provider_types import (
    Violation,
    check_gemini_client,
    check_gemini_server,
    check_openai_client,
    check_openai_server,
    check_xai_client,
    check_xai_server,
)

GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
OPENAI_PATH = "/v1/realtime"
ANSWER_AUDIO = base64.b64encode(bytes(960)).decode()  # 20 ms of silence at 24 kHz
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


class FakeProvider:
    """One fake provider; `start()` serves it from a thread of its own until `stop()`."""

    def __init__(
        self,
        kind: str,
        *,
        key: str,
        echo: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        assert kind in ("openai", "xai", "gemini")
        self.kind = kind
        self.key = key
        self.echo = echo
        self.ssl_context = ssl_context
        # "refuse": HTTP 503 at the upgrade; "mute": never acknowledge; "reject": an error instead
        self.mode = "normal"
        self.received: list[dict[str, Any]] = []  # every message from the edge, checked
        self.openings: list[dict[str, Any]] = []  # each session's configuration as received
        self.violations: list[str] = []
        self.requests: list[str] = []  # request paths (with query) of accepted upgrades
        self.headers: list[dict[str, str]] = []
        self.port = port
        self.conversations: dict[str, list[str]] = {}  # Gemini: what each session heard, by handle
        self.resumed_with: list[str] = []  # Gemini: the handles setups resumed with
        self.go_aways = 0
        self.go_away_at: list[float] = []  # time.perf_counter() as each goAway was sent (the bench)
        self.resumed_at: list[float] = []  # ... and as each resumed setup was acknowledged
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{GEMINI_PATH if self.kind == 'gemini' else OPENAI_PATH}"

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Received messages of one type (OpenAI `type`, or Gemini's top-level member)."""
        if self.kind != "gemini":
            return [message for message in self.received if message.get("type") == kind]
        return [message for message in self.received if kind in message]

    # Serving ------------------------------------------------------------------------------

    def start(self) -> FakeProvider:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake provider did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.run(self.serve_forever(ready.set))

    async def serve_forever(self, on_ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        handler = self._gemini if self.kind == "gemini" else self._openai
        server: Server
        async with serve(
            handler,
            "127.0.0.1",
            self.port,
            process_request=self._check_request,
            ssl=self.ssl_context,
            compression=None,
            max_size=1 << 22,
            max_queue=4,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            on_ready()
            await self._stop

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return connection.respond(200, "ok\n")  # the bench waits for this before measuring
        if path != (GEMINI_PATH if self.kind == "gemini" else OPENAI_PATH):
            return connection.respond(404, "no such endpoint\n")
        if self.kind != "gemini":
            authorized = request.headers.get("Authorization") == f"Bearer {self.key}"
            if not query.startswith("model=") and not self.echo:
                return connection.respond(400, "name the model in the query\n")
        else:
            authorized = request.headers.get("x-goog-api-key") == self.key
        if not authorized:
            return connection.respond(401, "invalid key\n")
        if self.mode == "refuse":
            return connection.respond(503, "overloaded\n")
        self.requests.append(request.path)
        self.headers.append(dict(request.headers.raw_items()))
        return None

    async def _check(self, connection: ServerConnection, frame: str | bytes) -> dict[str, Any] | None:
        """The frame as a message, once checked; None (connection closed) when it is not valid."""
        text = frame if isinstance(frame, str) else frame.decode()
        if self.echo:
            message: dict[str, Any] = json.loads(text)
            return message
        try:
            check = {"openai": check_openai_client, "xai": check_xai_client, "gemini": check_gemini_client}
            message = check[self.kind](text)
        except Violation as exc:
            self.violations.append(str(exc))
            await connection.close(1008, "invalid message")
            return None
        self.received.append(message)
        return message

    async def _send(
        self, connection: ServerConnection, message: dict[str, Any], *, compact: bool = False
    ) -> None:
        if self.echo:
            await connection.send(json.dumps(message))
            return
        try:
            check = {"openai": check_openai_server, "xai": check_xai_server, "gemini": check_gemini_server}
            text = check[self.kind](message)
        except Violation as exc:
            self.violations.append(f"the fake itself: {exc}")
            raise
        await connection.send(json.dumps(message, separators=(",", ":")) if compact else text)

    async def _ours(self, connection: ServerConnection, message: dict[str, Any]) -> bool:
        """The bench's pass-through floor sends this protocol: answer it in kind."""
        if message.get("type") == "session.start":
            await connection.send(json.dumps({"type": "session.started"}))
            return True
        if message.get("type") == "audio.append":
            await connection.send(json.dumps({"type": "audio.delta", "audio": message["audio"]}))
            return True
        return False

    # OpenAI -------------------------------------------------------------------------------

    async def _openai(self, connection: ServerConnection) -> None:
        state: dict[str, Any] = {"session": {}, "pending": None, "responding": None, "audio": 0}
        try:
            if not self.echo:
                await self._send(
                    connection,
                    {"type": "session.created", "event_id": _id("ev"), "session": {"type": "realtime"}},
                )
            async for frame in connection:
                message = await self._check(connection, frame)
                if message is None:
                    return
                if self.echo and await self._ours(connection, message):
                    continue
                if not await self._openai_event(connection, message, state):
                    return
        except ConnectionClosed:
            return

    async def _openai_event(
        self, connection: ServerConnection, message: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        kind = message["type"]
        if kind == "session.update":
            if not state["session"]:
                self.openings.append(message["session"])
            state["session"] = {**state["session"], **message["session"]}
            if self.mode == "reject":
                error = {"type": "invalid_request_error", "message": "Unknown parameter: 'session.x'."}
                await self._send(connection, {"type": "error", "event_id": _id("ev"), "error": error})
            elif self.mode != "mute":
                echoed = message["session"]
                if self.kind == "xai":  # said back in the shape OpenAI's server type declares
                    echoed = {"type": "realtime", "instructions": echoed.get("instructions", "")}
                update = {"type": "session.updated", "event_id": _id("ev"), "session": echoed}
                await self._send(connection, update)
        elif kind == "input_audio_buffer.append":
            if self.echo:
                await self._send(connection, self._delta("response.output_audio.delta", message["audio"]))
            else:
                state["audio"] += len(base64.b64decode(message["audio"]))
        elif kind == "input_audio_buffer.commit":
            await self._openai_commit(connection, state)
        elif kind == "input_audio_buffer.clear":
            state["audio"] = 0
            await self._send(connection, {"type": "input_audio_buffer.cleared", "event_id": _id("ev")})
        elif kind == "conversation.item.create":
            item = message["item"]
            if item["type"] == "function_call_output":
                state["pending"] = ("tool", item["output"])
            else:
                part = item["content"][0]
                state["pending"] = ("text", part.get("text") or f"an image {part.get('image_url', '')[:30]}")
            # No counterpart in the session protocol: the edge drops and counts it.
            await self._send(
                connection, {"type": "rate_limits.updated", "event_id": _id("ev"), "rate_limits": []}
            )
        elif kind == "response.create":
            return await self._openai_respond(connection, state)
        elif kind == "response.cancel" and state["responding"]:
            await self._send(connection, self._done(state["responding"], "cancelled"))
            state["responding"] = None
        return True

    async def _openai_commit(self, connection: ServerConnection, state: dict[str, Any]) -> None:
        item = _id("item")
        await self._send(
            connection, {"type": "input_audio_buffer.committed", "event_id": _id("ev"), "item_id": item}
        )
        started = {"type": "input_audio_buffer.speech_started", "event_id": _id("ev"), "item_id": item}
        await self._send(connection, {**started, "audio_start_ms": 0})
        stopped = {"type": "input_audio_buffer.speech_stopped", "event_id": _id("ev"), "item_id": item}
        await self._send(connection, {**stopped, "audio_end_ms": state["audio"] // 48})
        transcription = (state["session"].get("audio") or {}).get("input", {}).get("transcription")
        heard = {"type": "conversation.item.input_audio_transcription.completed", "item_id": item}
        if self.mode == "transcription_fails":
            error = {"type": "server_error", "code": "transcription_failed", "message": "no speech found"}
            await self._send(
                connection,
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "event_id": _id("ev"),
                    "item_id": item,
                    "content_index": 0,
                    "error": error,
                },
            )
        elif self.kind == "xai":
            # xAI transcribes by itself, and says the transcript so far as it goes.
            words = ["heard", f"{state['audio']}", "bytes"]
            for count in range(1, len(words) + 1):
                partial = count < len(words)
                await self._send(
                    connection,
                    {
                        **heard,
                        "event_id": _id("ev"),
                        "content_index": 0,
                        "transcript": " ".join(words[:count]),
                        "usage": {"type": "duration", "seconds": state["audio"] / 48000},
                        **({"status": "in_progress"} if partial else {}),
                    },
                )
        elif transcription:
            await self._send(
                connection,
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": _id("ev"),
                    "item_id": item,
                    "content_index": 0,
                    "transcript": f"heard {state['audio']} bytes",
                    "usage": {"type": "duration", "seconds": state["audio"] / 48000},
                },
            )
        state["pending"] = ("audio", f"{state['audio']} bytes of audio")
        state["audio"] = 0

    def _delta(self, kind: str, delta: str, response: str = "resp_0") -> dict[str, Any]:
        return {
            "type": kind,
            "event_id": _id("ev"),
            "response_id": response,
            "item_id": "item_0",
            "output_index": 0,
            "content_index": 0,
            "delta": delta,
        }

    def _done(self, response: str, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": response, "status": status}
        if details is not None:
            body["status_details"] = {"type": status, **details}
        if status in ("completed", "incomplete"):
            body["usage"] = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
        return {"type": "response.done", "event_id": _id("ev"), "response": body}

    async def _openai_respond(self, connection: ServerConnection, state: dict[str, Any]) -> bool:
        what, text = state["pending"] or ("text", "")
        if "provoke error" in text:
            # As OpenAI words a refused key: the full key, then a masked fragment of it.
            message = (
                f"the key {self.key} cannot do that. Incorrect API key provided: sk-****{self.key[-4:]}."
            )
            error = {"type": "invalid_request_error", "message": message}
            await self._send(connection, {"type": "error", "event_id": _id("ev"), "error": error})
            return True
        if "close the socket" in text:
            await connection.close(1011, "provider failure")
            return False
        if "stop reading" in text:
            # Stop reading: websockets' queue fills, then the socket's buffers, until the edge gives up.
            await connection.wait_closed()
            return False
        if "go silent" in text:
            return True  # connected, reading, and never a word again
        if "nest deeply" in text:
            await connection.send("[" * 200_000 + "]" * 200_000)  # deliberately no SDK message
            return True
        response = _id("resp")
        created = {"type": "response.created", "event_id": _id("ev"), "response": {"id": response}}
        await self._send(connection, {**created, "response": {"id": response, "status": "in_progress"}})
        for words, code in (
            ("use up the quota", "insufficient_quota"),
            ("hit the rate limit", "rate_limit_exceeded"),
        ):
            if words in text:
                # As OpenAI reports a key out of credit: the response fails, no error event.
                error = {"type": "invalid_request_error", "code": code}
                await self._send(connection, self._done(response, "failed", {"error": error}))
                return True
        if "run out of tokens" in text:
            await self._send(connection, self._delta("response.output_text.delta", "I was about", response))
            await self._send(connection, self._done(response, "incomplete", {"reason": "max_output_tokens"}))
            return True
        tools = [tool["name"] for tool in state["session"].get("tools") or ()]
        called = next((name for name in tools if what == "text" and name in text), None)
        if called is not None:
            call = self._delta("response.function_call_arguments.done", "", response)
            del call["delta"], call["content_index"]
            call.update(call_id=_id("call"), name=called, arguments=json.dumps({"city": "Paris"}))
            await self._send(connection, call)
            await self._send(connection, self._done(response, "completed"))
            return True
        answer = f"the tool said {text}" if what == "tool" else f"echo: {text}"
        if state["session"].get("output_modalities") == ["text"]:
            await self._send(connection, self._delta("response.output_text.delta", answer, response))
        else:
            await self._send(connection, self._delta("response.output_audio.delta", ANSWER_AUDIO, response))
            await self._send(
                connection, self._delta("response.output_audio_transcript.delta", answer, response)
            )
        if "keep talking" in text:
            state["responding"] = response  # until response.cancel
            return True
        await self._send(connection, self._done(response, "completed"))
        return True

    # Gemini -------------------------------------------------------------------------------

    async def _gemini(self, connection: ServerConnection) -> None:
        state: dict[str, Any] = {"setup": None, "text": "", "audio": 0, "image": None, "history": []}
        try:
            async for frame in connection:
                message = await self._check(connection, frame)
                if message is None:
                    return
                if self.echo and await self._ours(connection, message):
                    continue
                if state["setup"] is None:
                    if "setup" not in message:
                        await connection.close(1007, "the first message must be setup")
                        return
                    if not await self._gemini_setup(connection, message["setup"], state):
                        return
                    continue
                if not await self._gemini_message(connection, message, state):
                    return
        except ConnectionClosed:
            return

    async def _gemini_setup(
        self, connection: ServerConnection, setup: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle is not None:
            if self.mode == "refuse_resume" or handle not in self.conversations:
                await connection.close(1008, "invalid session resumption handle")
                return False
            self.resumed_with.append(handle)
            state["history"] = self.conversations[handle]  # the session goes on where it was
        state["setup"] = setup
        self.openings.append(setup)
        if self.mode == "nest":
            await connection.send("[" * 200_000 + "]" * 200_000)  # deliberately no SDK message
            return True
        if self.mode != "mute" and not (self.mode == "mute_resume" and handle is not None):
            await self._send(connection, {"setupComplete": {}})
            if handle is not None:
                self.resumed_at.append(time.perf_counter())
            await self._issue_handle(connection, state)
        return True

    async def _issue_handle(self, connection: ServerConnection, state: dict[str, Any]) -> None:
        if "sessionResumption" not in state["setup"] or self.mode == "no_handles":
            return
        handle = _id("handle")
        self.conversations[handle] = state["history"]
        update = {"newHandle": handle, "resumable": True}
        await self._send(connection, {"sessionResumptionUpdate": update})

    async def _gemini_message(
        self, connection: ServerConnection, message: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        if "clientContent" in message:
            # As Gemini 3.1 does: client content is for the initial history only.
            await connection.close(1007, "clientContent is not accepted mid-session")
            return False
        realtime = message.get("realtimeInput") or {}
        if "audio" in realtime:
            if self.echo:
                parts = [
                    {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": realtime["audio"]["data"]}}
                ]
                await self._send(connection, {"serverContent": {"modelTurn": {"parts": parts}}})
            else:
                if not state["audio"] and "realtimeInputConfig" not in state["setup"]:
                    # Automatic activity detection: speech starts with the first audio of a turn.
                    await self._send(connection, {"voiceActivity": {"voiceActivityType": "ACTIVITY_START"}})
                state["audio"] += len(base64.b64decode(realtime["audio"]["data"]))
        if "activityStart" in realtime:
            await self._send(connection, {"voiceActivity": {"voiceActivityType": "ACTIVITY_START"}})
        if realtime.get("activityEnd") is not None or realtime.get("audioStreamEnd"):
            await self._send(connection, {"voiceActivity": {"voiceActivityType": "ACTIVITY_END"}})
            if "inputAudioTranscription" in state["setup"]:
                heard = {"text": f"heard {state['audio']} bytes", "finished": True}
                await self._send(connection, {"serverContent": {"inputTranscription": heard}})
            state["audio"] = 0
            return await self._gemini_respond(connection, state, "some audio")
        if "video" in realtime:
            state["image"] = realtime["video"]["mimeType"]
        if "text" in realtime:
            state["history"].append(realtime["text"])
            return await self._gemini_respond(connection, state, realtime["text"])
        responses = (message.get("toolResponse") or {}).get("functionResponses")
        if responses:
            return await self._gemini_respond(connection, state, "", tool=responses[0]["response"]["output"])
        return True

    async def _gemini_respond(
        self, connection: ServerConnection, state: dict[str, Any], text: str, *, tool: str | None = None
    ) -> bool:
        if "close the socket" in text:
            await connection.close(1011, "provider failure")
            return False
        if "go silent" in text:
            return True
        if "nest deeply" in text:
            await connection.send("[" * 200_000 + "]" * 200_000)  # deliberately no SDK message
            return True
        setup = state["setup"]
        names = [
            declaration["name"]
            for group in setup.get("tools") or ()
            for declaration in group.get("functionDeclarations") or ()
        ]
        if "many calls" in text:
            calls = [{"id": f"{index:x}", "name": "f"} for index in range(38_000)]  # ~0.95 MB
            await self._send(connection, {"toolCall": {"functionCalls": calls}}, compact=True)
            return True
        called = next((name for name in names if tool is None and name in text), None)
        if called is not None:
            call = {"id": _id("call"), "name": called, "args": {"city": "Paris"}}
            await self._send(connection, {"toolCall": {"functionCalls": [call]}})
            if f"cancel {called}" in text:
                await self._send(connection, {"toolCallCancellation": {"ids": [call["id"]]}})
            return True
        if tool is not None:
            answer = f"the tool said {tool}"
        elif "what did I say" in text:
            answer = "you said: " + " | ".join(state["history"][:-1])
        else:
            answer = f"echo: {text}"
            if state["image"]:
                answer += f" (with an image of type {state['image']})"
                state["image"] = None
        if setup["generationConfig"]["responseModalities"] == ["TEXT"]:
            await self._send(connection, {"serverContent": {"modelTurn": {"parts": [{"text": answer}]}}})
        else:
            audio = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": ANSWER_AUDIO}}
            await self._send(connection, {"serverContent": {"modelTurn": {"parts": [audio]}}})
            if "outputAudioTranscription" in setup:
                await self._send(connection, {"serverContent": {"outputTranscription": {"text": answer}}})
        await self._send(connection, {"serverContent": {"generationComplete": True}})
        # A resumable point before the turn's end: once the edge relays the end, its handle is known.
        await self._issue_handle(connection, state)
        usage = {"promptTokenCount": 5, "responseTokenCount": 7, "totalTokenCount": 12}
        await self._send(connection, {"serverContent": {"turnComplete": True}, "usageMetadata": usage})
        if "go away" in text:
            self.go_aways += 1
            await self._send(connection, {"goAway": {"timeLeft": "5s"}})
            self.go_away_at.append(time.perf_counter())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.wait_closed(), 5)
            await connection.close(1000, "session time is up")
            return False
        if "drop the line" in text:
            await connection.close(1011, "connection reset")
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_providers", description=__doc__)
    parser.add_argument("--kind", choices=("openai", "gemini"), required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakeProvider(args.kind, key=args.key, echo=args.echo, port=args.port)

    def ready() -> None:
        print(json.dumps({"port": fake.port, "url": fake.url}), flush=True)

    try:
        asyncio.run(fake.serve_forever(ready))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
