"""`local`: a deterministic built-in model, enough to demonstrate and test every event of docs/protocol.md.

Text in (`text.input`, then `response.create`) gives a streamed echo. Audio in is cut into turns by
an energy detector (`server_vad`) or by `audio.commit`. A text naming a bound tool gives a `tool.call`;
its `tool.result` is answered in text. `/config` as text answers with the effective config as JSON
(how tests and operators see what the session is really running with); bound instructions and
tools show only that they are set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from app.clock import Clock
from app.session.binding import effective_defaults
from app.session.upstream import SessionInfo
from app.upstreams.audio import duration_ms, windows
from app.upstreams.turn import Turn, reply_deltas, tool_named

DEFAULT_THRESHOLD = 0.5
DEFAULT_SILENCE_MS = 500
EVENT_BYTES = 256  # what a queued event (speech, transcript, error) is counted as


class LocalConnection:
    """One session with the local model. Responses are produced lazily by `receive`, one event per call."""

    def __init__(self, session: SessionInfo, *, pace: float, clock: Clock | None = None) -> None:
        self._session = session
        self._pace = pace
        self._clock = clock
        # Made when a response starts (the only time a cancel can matter), not with every session.
        self._cancel: asyncio.Event | None = None
        self._config = effective_defaults(session.config, session.model)
        self._outbox: list[dict[str, Any]] = []  # a few events at most; a deque would cost 0.7 KiB
        # What `receive` waits on: a bare future, made anew for each wait. An asyncio.Event would do,
        # but carries a deque of its own; an idle session waits here for its whole life.
        self._wakeup: asyncio.Future[None] | None = None
        self._turn = Turn()
        self._response: AsyncIterator[dict[str, Any] | None] | None = None
        self._cancelled = False
        self._calls: dict[str, str] = {}
        self._call_count = 0
        self._speaking = False
        self._silence_ms = 0.0
        self._quiet_ms = 0.0
        self._turn_bytes = 0  # what the turn being gathered holds
        self._reply_bytes = 0  # what the response in flight holds (its turn)

    def buffered_bytes(self) -> int:
        """What this connection holds: the turn being gathered, the one answered, queued events."""
        return self._turn_bytes + self._reply_bytes + len(self._outbox) * EVENT_BYTES

    # Client events -----------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "session.update":
            merged = {**self._session.config, **event["config"]}
            self._session = SessionInfo(
                self._session.session_id,
                self._session.project,
                {name: value for name, value in merged.items() if value is not None},
                self._session.model,
                self._session.hidden,
            )
            self._config = effective_defaults(self._session.config, self._session.model)
        elif kind == "text.input":
            self._turn.texts.append(event["text"])
            self._turn_bytes += len(event["text"])
        elif kind == "image.input":
            self._turn.images += 1
        elif kind == "tool.result":
            name = self._calls.pop(event["tool_call_id"], "unknown")
            result = str(event["tool_result"])
            self._turn.tool_results.append((name, result))
            self._turn_bytes += len(name) + len(result)
        elif kind == "audio.append":
            self._hear(base64.b64decode(event["audio"]))
        elif kind == "audio.commit":
            self._commit(explicit=True)
        elif kind == "audio.clear":
            self._turn.audio_ms = 0.0
            self._quiet_ms = 0.0
            self._speaking = False
            self._silence_ms = 0.0
        elif kind == "response.create":
            self._start_response()
        elif kind == "response.cancel":
            if self._response is not None and self._cancel is not None:
                self._cancelled = True
                self._cancel.set()
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _sleep(self) -> None:
        """Until the next `send` (or cancellation)."""
        self._wakeup = asyncio.get_running_loop().create_future()
        await self._wakeup

    def _error(self, message: str) -> None:
        self._outbox.append({"type": "error", "error": {"code": "invalid_event", "message": message}})

    def _hear(self, audio: bytes) -> None:
        rate = self._session.model.input_sample_rate
        turn = self._config["turn_detection"]
        if (turn.get("type") or "server_vad") not in ("server_vad", "semantic_vad"):  # no type: the default
            self._turn.audio_ms += duration_ms(audio, rate)
            return
        # 0 is a setting, not "unset": a threshold of 0 hears any sound, 0 ms cuts at the first quiet window.
        threshold = 0.05 * (DEFAULT_THRESHOLD if turn.get("threshold") is None else turn["threshold"])
        silence_limit = turn.get("silence_duration_ms")
        if silence_limit is None:
            silence_limit = DEFAULT_SILENCE_MS
        for window_ms, energy in windows(audio, rate):
            # Window by window, so a cut splits the chunk; quiet before any speech is not part of a
            # turn the detector cuts (it still counts when the client commits by hand).
            if self._speaking or energy > threshold:
                self._turn.audio_ms += window_ms
            else:
                self._quiet_ms += window_ms
            if energy > threshold:
                self._silence_ms = 0.0
                if not self._speaking:
                    self._speaking = True
                    self._outbox.append({"type": "speech.started"})
            elif self._speaking:
                self._silence_ms += window_ms
                if self._silence_ms >= silence_limit:
                    self._commit(explicit=False)

    def _commit(self, *, explicit: bool) -> None:
        if explicit and not self._turn.audio_ms:
            self._turn.audio_ms = self._quiet_ms
        self._quiet_ms = 0.0
        if not self._turn.audio_ms:
            if explicit:
                self._error("audio.commit with no audio appended since the last turn")
            return
        if not self._speaking:
            self._outbox.append({"type": "speech.started"})
        self._outbox.append({"type": "speech.stopped"})
        self._speaking = False
        self._silence_ms = 0.0
        if self._config.get("input_transcription"):
            self._outbox.append(
                {
                    "type": "transcript.committed",
                    "transcript": f"[{self._turn.audio_ms / 1000:.1f} s of audio]",
                }
            )
        self._start_response()

    # Responses ---------------------------------------------------------------------------

    def _start_response(self) -> None:
        if self._response is not None:
            self._error("a response is already in progress: cancel it or wait for response.completed")
            return
        turn, self._turn = self._turn, Turn()
        self._reply_bytes, self._turn_bytes = self._turn_bytes, 0
        self._cancelled = False
        self._cancel = asyncio.Event()
        self._response = self._respond(turn)

    def _deadline(self) -> float:
        """When the next delta is due: `pace` from now, on the clock when one is given."""
        return (anyio.current_time() if self._clock is None else self._clock.now()) + self._pace

    async def _wait(self, deadline: float) -> bool:
        """Wait for `deadline` or `response.cancel` (True), unless events arrive to go out first (False).

        So a `speech.started` (the user talking over the model) or an `error` is not held back behind
        the delta in flight.
        """
        if self._outbox:
            return False
        due = True
        cancel = self._cancel
        assert cancel is not None  # noqa: S101 - made when the response started
        async with anyio.create_task_group() as group:

            async def paced() -> None:
                if self._clock is None:
                    await anyio.sleep_until(deadline)
                else:
                    await self._clock.sleep_until(deadline)
                group.cancel_scope.cancel()

            async def cancelled() -> None:
                await cancel.wait()
                group.cancel_scope.cancel()

            async def nudged() -> None:
                nonlocal due
                while not self._outbox:
                    await self._sleep()
                due = False
                group.cancel_scope.cancel()

            group.start_soon(paced)
            group.start_soon(cancelled)
            group.start_soon(nudged)
        return due

    async def _respond(self, turn: Turn) -> AsyncIterator[dict[str, Any] | None]:
        """The events of one response; None means "let queued events out, then call again"."""
        yield {"type": "response.started"}
        tool = tool_named(self._config.get("tools") or (), turn.texts)
        if tool is not None and not turn.tool_results:
            self._call_count += 1
            call_id = f"call_{self._call_count}"
            self._calls[call_id] = tool
            arguments = json.dumps({"text": turn.texts[-1]})
            yield {
                "type": "tool.call",
                "tool_call_id": call_id,
                "tool_name": tool,
                "tool_arguments": arguments,
            }
            self._reply_bytes = 0
            yield {"type": "response.completed", "status": "completed"}
            return
        for delta in reply_deltas(turn, self._config["modalities"], self._session):
            deadline = self._deadline()
            while not await self._wait(deadline):
                yield None
            if self._cancelled:
                self._reply_bytes = 0
                yield {"type": "response.completed", "status": "cancelled"}
                return
            yield delta
        self._reply_bytes = 0
        yield {"type": "response.completed", "status": "completed"}

    async def receive(self) -> dict[str, Any] | None:
        while True:
            if self._outbox:
                return self._outbox.pop(0)
            if self._response is not None:
                try:
                    event = await anext(self._response)
                except StopAsyncIteration:
                    self._response = None
                    self._reply_bytes = 0
                    continue
                if event is not None:
                    return event
                continue  # None: queued events go out first, then the response goes on
            await self._sleep()

    async def aclose(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            with contextlib.suppress(RuntimeError):  # still running in a cancelled receive()
                await response.aclose()  # type: ignore[attr-defined]


class LocalUpstream:
    """The built-in model; `pace` is the pause between streamed deltas, in seconds.

    With a `clock`, the pause is taken on that clock (tests step a fake clock through a response).
    """

    def __init__(self, *, pace: float = 0.01, clock: Clock | None = None) -> None:
        self._pace = pace
        self._clock = clock

    @asynccontextmanager
    async def connect(self, session: SessionInfo) -> AsyncIterator[LocalConnection]:
        connection = LocalConnection(session, pace=self._pace, clock=self._clock)
        try:
            yield connection
        finally:
            await connection.aclose()
