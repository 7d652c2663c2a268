"""`ProviderConnection`: one session's provider as the session loop sees an upstream; the reader task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from websockets.exceptions import ConnectionClosed

from app.exceptions import UpstreamError
from app.session.events import encode_event, error_event
from app.sessionerrors import ProtocolError, SessionUpdateUnsupportedError
from app.upstreams.providers.base import decode_message
from app.upstreams.providers.link import ERROR_BYTES, EVENT_BYTES, _close, _closed
from app.upstreams.providers.resumption import ResumableLink


class ProviderConnection(ResumableLink):
    """One session's connection to its provider, as the session loop sees an upstream.

    Gemini's connections end after minutes: on `goAway`, or a close while a resumable handle is
    held, the reader opens a new one (`reconnect`) with the translator's `resumption_opening()`.
    Client messages meanwhile are held, counted against the session's budget, and sent in order
    once the new connection acknowledged. After a client event the provider must answer
    (`Translator.expects_answer`), the reader waits at most `response_timeout` for each message.
    """

    def buffered_bytes(self) -> int:
        """Events translated and not yet taken (counted as the provider frames they came from, and
        `EVENT_BYTES` each), and client messages held while a connection is resumed."""
        return self._outbox.held + self._held_bytes + self._expanding + self._since_handle_bytes

    def on_growth(self, notify: Callable[[], None]) -> None:
        self._notify = notify
        self._outbox.on_growth(notify)

    async def start(self) -> None:
        """Configure the provider's session and wait for its acknowledgement (the caller times it)."""
        await self._configure(self._websocket, self._translator.opening(), "refused the session")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def aclose(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError):
                await self._reader
        await _close(self._websocket)

    # Client to provider -------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        try:
            messages = self._translator.to_provider(event)
        except (ProtocolError, SessionUpdateUnsupportedError) as exc:
            await self._outbox.put(error_event(exc), ERROR_BYTES)  # non-fatal: the browser hears why
            return
        if event["type"] != "audio.append" and self._translator.expects_answer(event):
            self._expect_answer()
        for message in messages:
            await self._send_message(message)

    async def _send_message(self, message: dict[str, Any]) -> None:
        text = encode_event(message)
        if self._resuming:
            self._hold(text)
            return
        websocket = self._websocket
        try:
            if self._cannot_wait(len(text)):
                await websocket.send(text)  # no timer for a send that returns at once
            else:
                await self._send_text(text, websocket)
        except ConnectionClosed as exc:
            if self._resuming or self._can_resume():
                self._hold(text)  # the reader sees the close too, and resumes
                return
            raise _closed(self._provider, exc, "mid-session") from None
        if self._translator.handle is not None:
            self._sent(text)

    # Provider to client -------------------------------------------------------------------

    async def receive(self) -> dict[str, Any] | None:
        if self._failure is not None:
            raise self._failure
        item = await self._outbox.get()
        if isinstance(item, UpstreamError):
            self._failure = item
            raise item
        return item

    async def _read(self) -> None:
        """Provider messages to the outbox until the provider closes or fails (then its error).

        Each event counts `EVENT_BYTES` from the moment its message is translated (one message must
        not expand past the budget unseen); the frame's size is held until its last event is taken.
        The loop is inline: it runs once per provider frame, and each coroutine layer costs there.
        """
        try:
            while True:
                self._receiving = True  # the silence check may cancel this wait, and only this one
                try:
                    frame = await self._websocket.recv()
                except ConnectionClosed as exc:
                    closed = _closed(self._provider, exc, "mid-session")
                    if not self._can_resume():
                        raise closed from None
                    await self._resume(closed.message.removeprefix(f"{self._provider} "))
                    continue
                except asyncio.CancelledError:
                    self._silent()
                    raise
                finally:
                    self._receiving = False
                if self._answer_due is not None:  # it said something: the wait starts again
                    self._expect_answer()
                message = decode_message(frame, self._string_kinds)
                if not isinstance(message, dict):
                    raise UpstreamError(f"{self._provider} sent a frame that is not a JSON object")
                size = len(frame)
                events = self._translate(message) or ()
                if self._translator.handle != self._handle:
                    self._new_handle()
                last = len(events)
                if last > 1:
                    self._expanding = EVENT_BYTES * last
                    self._notify()
                for index, event in enumerate(events, 1):
                    if last > 1:
                        self._expanding -= EVENT_BYTES
                    kind = event["type"]
                    if kind == "response.completed":
                        self._answer_due = None
                    elif kind == "speech.stopped" and not self._translator.manual_turns:
                        self._expect_answer()  # a turn ended by the provider's voice detection
                    await self._outbox.put(event, EVENT_BYTES + (size if index == last else 0))
                if self._translator.going_away:
                    await self._resume("announced the end of its connection (goAway)")
        except UpstreamError as exc:
            await self._outbox.put(exc, 0)
