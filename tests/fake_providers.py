"""Fake model providers: real WebSocket servers on 127.0.0.1 speaking OpenAI Realtime or Gemini Live.

Each checks the auth header, checks EVERY message the edge sends against the provider SDK's types
(`tests.provider_types`; a violation is recorded and closes the connection with 1008), and sends
only messages that parse as the SDK's server types. A small script drives the answers: a text
naming a session tool gets a tool call; `provoke error`, `close the socket`, `stop reading` and
`keep talking` exercise failures and cancel; anything else is echoed (`echo: <text>`).

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
import itertools
import json
import ssl
import sys
import threading
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
        assert kind in ("openai", "gemini")
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{OPENAI_PATH if self.kind == 'openai' else GEMINI_PATH}"

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Received messages of one type (OpenAI `type`, or Gemini's top-level member)."""
        if self.kind == "openai":
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
        handler = self._openai if self.kind == "openai" else self._gemini
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
        if path != (OPENAI_PATH if self.kind == "openai" else GEMINI_PATH):
            return connection.respond(404, "no such endpoint\n")
        if self.kind == "openai":
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
            message = check_openai_client(text) if self.kind == "openai" else check_gemini_client(text)
        except Violation as exc:
            self.violations.append(str(exc))
            await connection.close(1008, "invalid message")
            return None
        self.received.append(message)
        return message

    async def _send(self, connection: ServerConnection, message: dict[str, Any]) -> None:
        if self.echo:
            await connection.send(json.dumps(message))
            return
        try:
            text = check_openai_server(message) if self.kind == "openai" else check_gemini_server(message)
        except Violation as exc:
            self.violations.append(f"the fake itself: {exc}")
            raise
        await connection.send(text)

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
                update = {"type": "session.updated", "event_id": _id("ev"), "session": message["session"]}
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
        if transcription:
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

    def _done(self, response: str, status: str) -> dict[str, Any]:
        return {
            "type": "response.done",
            "event_id": _id("ev"),
            "response": {"id": response, "status": status},
        }

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
        response = _id("resp")
        created = {"type": "response.created", "event_id": _id("ev"), "response": {"id": response}}
        await self._send(connection, {**created, "response": {"id": response, "status": "in_progress"}})
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
        state: dict[str, Any] = {"setup": None, "text": "", "audio": 0}
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
                    state["setup"] = message["setup"]
                    self.openings.append(message["setup"])
                    if self.mode != "mute":
                        await self._send(connection, {"setupComplete": {}})
                    continue
                if not await self._gemini_message(connection, message, state):
                    return
        except ConnectionClosed:
            return

    async def _gemini_message(
        self, connection: ServerConnection, message: dict[str, Any], state: dict[str, Any]
    ) -> bool:
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
        content = message.get("clientContent")
        if content is not None:
            for turn in content.get("turns") or ():
                part = turn["parts"][0]
                state["text"] = part.get("text") or f"an image of type {part['inlineData']['mimeType']}"
            if content.get("turnComplete"):
                return await self._gemini_respond(connection, state, state["text"])
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
        setup = state["setup"]
        names = [
            declaration["name"]
            for group in setup.get("tools") or ()
            for declaration in group.get("functionDeclarations") or ()
        ]
        called = next((name for name in names if tool is None and name in text), None)
        if called is not None:
            call = {"id": _id("call"), "name": called, "args": {"city": "Paris"}}
            await self._send(connection, {"toolCall": {"functionCalls": [call]}})
            return True
        answer = f"the tool said {tool}" if tool is not None else f"echo: {text}"
        if setup["generationConfig"]["responseModalities"] == ["TEXT"]:
            await self._send(connection, {"serverContent": {"modelTurn": {"parts": [{"text": answer}]}}})
        else:
            audio = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": ANSWER_AUDIO}}
            await self._send(connection, {"serverContent": {"modelTurn": {"parts": [audio]}}})
            if "outputAudioTranscription" in setup:
                await self._send(connection, {"serverContent": {"outputTranscription": {"text": answer}}})
        await self._send(connection, {"serverContent": {"generationComplete": True}})
        await self._send(connection, {"serverContent": {"turnComplete": True}})
        await self._send(connection, {"usageMetadata": {"totalTokenCount": 12}})
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
