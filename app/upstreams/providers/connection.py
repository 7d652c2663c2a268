"""`ProviderConnection`: one session's provider as the session loop sees an upstream; its receive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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

    `receive` reads the provider itself, in the caller's task (the session's pump): no reader task
    and no queue between them, so a provider frame costs one task wake-up, and a browser that reads
    slowly leaves provider frames unread (websockets then stops reading the socket).

    Gemini's connections end after minutes: on `goAway`, or a close while a resumable handle is
    held, `receive` opens a new one (`reconnect`) with the translator's `resumption_opening()`.
    Client messages meanwhile are held, counted against the session's budget, and sent in order
    once the new connection acknowledged. After a client event the provider must answer
    (`Translator.expects_answer`), each wait for its next message lasts at most `response_timeout`.
    """

    def buffered_bytes(self) -> int:
        """Events translated and not yet taken (the rest of a message that became several, counted
        as `EVENT_BYTES` each and the frame they came from; our error events, `ERROR_BYTES`), and
        client messages held while a connection is resumed or kept to send again on one."""
        return self._pending_bytes + self._held_bytes + self._since_handle_bytes

    def on_growth(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    async def start(self) -> None:
        """Configure the provider's session and wait for its acknowledgement (the caller times it)."""
        await self._configure(self._websocket, self._translator.opening(), "refused the session")

    async def aclose(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
        await _close(self._websocket)

    # Client to provider -------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        try:
            messages = self._translator.to_provider(event)
        except (ProtocolError, SessionUpdateUnsupportedError) as exc:
            self._queue(error_event(exc), ERROR_BYTES)  # non-fatal: the browser hears why
            self._wake()
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
                self._write(text)  # no timer, no wait: it returns at once
            else:
                await self._send_text(text, websocket)
        except ConnectionClosed as exc:
            if self._resuming or self._can_resume():
                self._hold(text)  # `receive` sees the close too, and resumes
                return
            raise _closed(self._provider, exc, "mid-session") from None
        if self._translator.handle is not None:
            self._sent(text)

    # Provider to client -------------------------------------------------------------------

    async def receive(self) -> dict[str, Any] | None:
        """The next event: one queued, else the first of the provider's next message that has any.

        A failure is raised again on every later call. The loop is inline: it runs once per
        provider frame, and each coroutine layer costs there.
        """
        while True:
            if self._pending:
                event, size = self._pending.popleft()
                self._pending_bytes -= size
                return event
            if self._failure is not None:
                raise self._failure
            try:
                if self._translator.going_away:
                    await self._resume("announced the end of its connection (goAway)")
                    continue
                self._receiving = asyncio.current_task()  # the only wait the silence check may cancel
                try:
                    frame = await self._websocket.recv()
                except ConnectionClosed as exc:
                    closed = _closed(self._provider, exc, "mid-session")
                    if not self._can_resume():
                        raise closed from None
                    await self._resume(closed.message.removeprefix(f"{self._provider} "))
                    continue
                except asyncio.CancelledError:
                    if self._interrupted():
                        continue  # an event of ours to hand over
                    raise
                finally:
                    self._receiving = None
                if self._answer_due is not None:  # it said something: the wait starts again
                    self._expect_answer()
                message = decode_message(frame, self._string_kinds)
                if not isinstance(message, dict):
                    raise UpstreamError(f"{self._provider} sent a frame that is not a JSON object")
                events = self._translate(message) or ()
                if self._translator.handle != self._handle:
                    self._new_handle()
                for event in events:
                    kind = event["type"]
                    if kind == "response.completed":
                        self._answer_due = None
                    elif kind == "speech.stopped" and not self._translator.manual_turns:
                        self._expect_answer()  # a turn ended by the provider's voice detection
            except UpstreamError as exc:
                self._failure = exc
                raise
            if len(events) == 1:
                return events[0]  # the common case: handed over at once, nothing held
            if events:
                # The rest wait for the next calls, each counted, the frame with the last.
                last = len(events) - 1
                for index in range(1, last + 1):
                    self._pending.append((events[index], EVENT_BYTES + (len(frame) if index == last else 0)))
                self._pending_bytes += EVENT_BYTES * last + len(frame)
                self._notify()
                return events[0]
