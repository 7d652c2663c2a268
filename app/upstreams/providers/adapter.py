"""`providers`: each session on the model provider its model names (docs/protocol.md), translated both ways.

The translation is `app.upstreams.providers` (pure); this module only does the I/O. One WebSocket per session,
authenticated by a header (the key is never in the URL). The start waits for the provider's
acknowledgement within the upstream timeout. A reader task turns provider messages into server
events on a bounded outbox whose bytes count against the session's memory budget; when the outbox is
full it stops reading, so a slow browser slows the provider (websockets' own receive queue holds one
frame). A send that waits longer than the timeout
for the provider to read means the provider stopped reading: the session ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from app.config import Settings
from app.exceptions import UpstreamError
from app.session.events import encode_event, error_event
from app.session.models import ModelInfo
from app.session.upstream import SessionInfo
from app.sessionerrors import ProtocolError, SessionUpdateUnsupportedError
from app.upstreams.outbox import Outbox
from app.upstreams.providers import Translator, translator_for
from app.upstreams.providers.base import decode_message, redact

logger = logging.getLogger(__name__)

OUTBOX_EVENTS = 16  # server events translated and not yet taken by the session
RECEIVE_QUEUE_FRAMES = 1  # provider frames websockets buffers before it stops reading: the reader drains it
ERROR_BYTES = 256  # what an error event of ours (an event the provider cannot take) is counted as
EVENT_BYTES = 256  # what each translated event is counted as, besides the frame it came from
MAX_PROVIDER_FRAME = 1 << 20  # bytes; an audio delta is a few KiB
#: Client messages sent since the newest resumption handle, kept to send again on a resumed
#: connection (the handle's state does not hold them); past this many bytes (and a quarter of the
#: session's memory budget) the oldest go.
SINCE_HANDLE_BYTES = 1 << 20

Dropped = Callable[[str, str], None]


@dataclass(frozen=True)
class Endpoint:
    """Where one provider is reached and how it is authenticated."""

    provider: str
    url: str
    key: str = field(repr=False)
    model_in_query: bool = True  # OpenAI and xAI name the model in the URL; Gemini in `setup`

    def headers(self) -> dict[str, str]:
        if self.provider == "gemini":
            return {"x-goog-api-key": self.key}
        return {"Authorization": f"Bearer {self.key}"}

    def url_for(self, model: ModelInfo) -> str:
        if not self.model_in_query:
            return self.url
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}{urlencode({'model': model.provider_name})}"


def endpoints(settings: Settings) -> dict[str, Endpoint]:
    """The providers with a key in `settings`: only their models are served."""
    found = {}
    for provider, key, url in (
        ("openai", settings.openai_api_key, settings.openai_url),
        ("xai", settings.xai_api_key, settings.xai_url),
        ("gemini", settings.gemini_api_key, settings.gemini_url),
    ):
        if key:
            found[provider] = Endpoint(provider, url, key, model_in_query=provider != "gemini")
    return found


def _closed(provider: str, exc: ConnectionClosed, when: str) -> UpstreamError:
    # The provider's close frame; else ours (a frame over the size limit is our 1009); else none (1006).
    frame = exc.rcvd or exc.sent
    code = frame.code if frame is not None else 1006
    reason = f": {redact(frame.reason)[:200]}" if frame is not None and frame.reason else ""
    return UpstreamError(f"{provider} closed the connection {when} (close code {code}{reason})")


_CLOSING: set[asyncio.Task[None]] = set()  # closes that outlive a cancelled session, until done


def _close_later(websocket: ClientConnection) -> None:
    """Close in the background (bounded by the connection's close timeout), not waiting for it."""
    closing = asyncio.get_running_loop().create_task(websocket.close())
    _CLOSING.add(closing)
    closing.add_done_callback(_CLOSING.discard)


async def _close(websocket: ClientConnection) -> None:
    """Close, shielded and bounded: the session may be ending because its task was cancelled."""
    closing = asyncio.get_running_loop().create_task(websocket.close())
    _CLOSING.add(closing)
    closing.add_done_callback(_CLOSING.discard)
    with suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closing), 2)


class ProviderConnection:
    """One session's connection to its provider, as the session loop sees an upstream.

    Gemini's connections end after minutes: on `goAway`, or a close while a resumable handle is
    held, the reader opens a new one (`reconnect`) with the translator's `resumption_opening()`.
    Client messages meanwhile are held, counted against the session's budget, and sent in order
    once the new connection acknowledged. After a client event the provider must answer
    (`Translator.expects_answer`), the reader waits at most `response_timeout` for each message.
    """

    def __init__(
        self,
        websocket: ClientConnection,
        translator: Translator,
        endpoint: Endpoint,
        *,
        timeout: float,
        dropped: Dropped,
        reconnect: Callable[[], Awaitable[ClientConnection]] | None = None,
        response_timeout: float = 30.0,
        resumes: int = 10,
        resumed: Callable[[str], None] | None = None,
        session_id: str = "-",
        since_handle_bytes: int = SINCE_HANDLE_BYTES,
    ) -> None:
        self._websocket = websocket
        self._translator = translator
        self._endpoint = endpoint
        self._provider = endpoint.provider
        self._timeout = timeout
        self._dropped = dropped
        self._reconnect = reconnect
        self._response_timeout = response_timeout
        self._resumes = resumes
        self._on_resumed = resumed or (lambda provider: None)
        self._session_id = session_id
        self._outbox: Outbox[dict[str, Any] | UpstreamError] = Outbox(OUTBOX_EVENTS)
        self._notify: Callable[[], None] = lambda: None
        self._reader: asyncio.Task[None] | None = None
        self._failure: UpstreamError | None = None
        self._transport: asyncio.WriteTransport | None = getattr(websocket, "transport", None)
        # Message types whose translation reads one string member, and that member.
        self._string_kinds: dict[str, str] = getattr(translator, "string_kinds", {})
        self._held: deque[str] = deque()  # messages for the provider while a new connection opens
        self._held_bytes = 0
        self._since_handle: deque[str] = deque()  # sent after the newest handle came
        self._since_handle_bytes = 0
        self._since_handle_limit = since_handle_bytes
        self._handle: str | None = None
        self._expanding = 0  # events of the message being queued, not yet in the outbox
        self._resuming = False
        self.resumptions = 0
        self._answer_due: float | None = None  # loop time by which the provider must say something
        self._silence: asyncio.TimerHandle | None = None  # checks `_answer_due` when it may have passed
        self._receiving = False  # the reader waits on the provider (not on the browser)
        self._silenced = False  # the silence check cancelled the reader

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

    async def _configure(
        self, websocket: ClientConnection, opening: list[dict[str, Any]], refused: str
    ) -> None:
        """Send `opening` on `websocket`, then read until the provider acknowledges it."""
        try:
            for message in opening:
                await self._send_text(encode_event(message), websocket)
        except ConnectionClosed as exc:
            raise _closed(self._provider, exc, "before acknowledging the session") from None
        while True:
            message = (await self._next_frame("before acknowledging the session", websocket))[0]
            if self._translator.acknowledges(message):
                return
            for event in self._translate(message) or ():
                if event.get("type") == "error":
                    said = str(event["error"]["message"]).removeprefix(f"{self._provider}: ")
                    raise UpstreamError(f"{self._provider} {refused}: {said}")

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

    def _expect_answer(self) -> None:
        """The provider must answer: the reader's wait for its next message is bounded from now."""
        loop = asyncio.get_running_loop()
        self._answer_due = loop.time() + self._response_timeout
        if self._silence is None:
            self._silence = loop.call_at(self._answer_due, self._check_silence)

    def _check_silence(self) -> None:
        """The answer's deadline may have passed: a timer that moves lazily with `_answer_due`
        (each provider message moves it; a timer per message would cost every frame)."""
        self._silence = None
        due = self._answer_due
        if due is None or self._reader is None:
            return
        loop = asyncio.get_running_loop()
        if not self._receiving and loop.time() >= due:
            due = self._answer_due = loop.time() + self._response_timeout  # it waits on the browser
        if loop.time() < due:
            self._silence = loop.call_at(due, self._check_silence)
            return
        self._silenced = True
        self._reader.cancel()

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

    def _sent(self, text: str) -> None:
        """Keep a message sent since the newest handle: a resumed session has not seen it."""
        self._since_handle.append(text)
        self._since_handle_bytes += len(text)
        while self._since_handle_bytes > self._since_handle_limit:
            self._since_handle_bytes -= len(self._since_handle.popleft())
        self._notify()

    def _new_handle(self) -> None:
        """A newer handle holds everything sent so far."""
        self._handle = self._translator.handle
        self._since_handle.clear()
        self._since_handle_bytes = 0

    def _hold(self, text: str) -> None:
        self._held.append(text)
        self._held_bytes += len(text)
        self._notify()

    async def _send_text(self, text: str, websocket: ClientConnection) -> None:
        """Send one frame within the timeout; ConnectionClosed passes through (the caller names
        the moment)."""
        try:
            async with asyncio.timeout(self._timeout):
                await websocket.send(text)
        except TimeoutError:
            raise UpstreamError(
                f"{self._provider} stopped reading: a send waited over {self._timeout:g} s"
            ) from None

    def _cannot_wait(self, chars: int) -> bool:
        """Whether a send of `chars` characters returns without waiting for the provider to read:
        writing is not paused, and the write buffer stays under its high-water mark with the frame
        in it (at most 4 bytes a character and its header), so writing it cannot pause."""
        transport = self._transport
        if transport is None or self._websocket.paused:
            return False
        return transport.get_write_buffer_size() + 4 * chars + 16 <= transport.get_write_buffer_limits()[1]

    # Provider to client -------------------------------------------------------------------

    async def receive(self) -> dict[str, Any] | None:
        if self._failure is not None:
            raise self._failure
        item = await self._outbox.get()
        if isinstance(item, UpstreamError):
            self._failure = item
            raise item
        return item

    async def _next_frame(self, when: str, websocket: ClientConnection) -> tuple[dict[str, Any], int]:
        """The provider's next message, decoded, and the size of its frame."""
        try:
            frame = await websocket.recv()
        except ConnectionClosed as exc:
            raise _closed(self._provider, exc, when) from None
        return self._decode(frame)

    def _decode(self, frame: str | bytes) -> tuple[dict[str, Any], int]:
        message = decode_message(frame, self._string_kinds)
        if not isinstance(message, dict):
            raise UpstreamError(f"{self._provider} sent a frame that is not a JSON object")
        return message, len(frame)

    def _translate(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        try:
            events = self._translator.from_provider(message)
        except RecursionError:
            raise UpstreamError(f"{self._provider} sent a message nested too deeply") from None
        except (KeyError, TypeError, AttributeError, ValueError):
            logger.info(
                "%s sent a malformed %s message; dropped", self._provider, self._translator.kind(message)
            )
            events = None
        if events is None:
            self._dropped(self._provider, self._translator.kind(message))
        return events

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

    def _silent(self) -> None:
        """The reader's wait was cancelled: by the silence check, the provider stopped answering
        (raised in place of the cancellation); else the cancellation goes on."""
        task = asyncio.current_task()
        if not self._silenced or task is None:
            return
        self._silenced = False
        task.uncancel()
        raise UpstreamError(
            f"{self._provider}: the provider stopped answering (nothing for "
            f"{self._response_timeout:g} s after an answer was asked for)"
        ) from None

    # Resumption ---------------------------------------------------------------------------

    def _can_resume(self) -> bool:
        return self._reconnect is not None and self._translator.resumption_opening() is not None

    async def _resume(self, why: str) -> None:
        """A new connection, resuming the session, takes over; held client messages follow.

        Raises:
            UpstreamError: no handle to resume with, too many resumptions, or the new connection
                failed or was not acknowledged within the upstream timeout.
        """
        opening = self._translator.resumption_opening()
        if opening is None or self._reconnect is None:
            raise UpstreamError(f"{self._provider} {why}, and gave no handle to resume the session with")
        if self.resumptions >= self._resumes:
            raise UpstreamError(
                f"{self._provider} {why}: the session was resumed {self._resumes} times already"
            )
        self._resuming = True
        self.resumptions += 1
        _close_later(self._websocket)
        websocket: ClientConnection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                websocket = await self._reconnect()
                await self._configure(websocket, opening, "refused to resume the session")
        except BaseException as exc:
            if websocket is not None:
                _close_later(websocket)
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    f"{self._provider} did not acknowledge the resumed session within {self._timeout:g} s"
                ) from None
            if isinstance(exc, UpstreamError):
                raise UpstreamError(f"resuming the session failed: {exc.message}") from None
            raise
        self._websocket = websocket
        self._transport = getattr(websocket, "transport", None)
        logger.info(
            "session %s: %s %s; resumed on a new connection (%d of at most %d)",
            self._session_id,
            self._provider,
            why,
            self.resumptions,
            self._resumes,
        )
        self._on_resumed(self._provider)
        for event in self._translator.resumed():
            await self._outbox.put(event, EVENT_BYTES)
        if self._answer_due is not None:
            self._expect_answer()
        try:
            # What the old connection took after the handle was made, then what waited meanwhile
            # (sends made while this runs join the queue: the order is kept).
            for text in list(self._since_handle):
                await self._send_text(text, websocket)
            while self._held:
                text = self._held.popleft()
                self._held_bytes -= len(text)
                await self._send_text(text, websocket)
                if self._translator.handle is not None:
                    self._sent(text)
        except ConnectionClosed as exc:
            raise _closed(self._provider, exc, "after resuming") from None
        self._resuming = False


class ProvidersUpstream:
    """Connects each session to the provider of its model, among those configured."""

    def __init__(
        self,
        providers: Mapping[str, Endpoint],
        *,
        timeout: float,
        dropped: Dropped | None = None,
        response_timeout: float = 30.0,
        resumes: int = 10,
        resumed: Callable[[str], None] | None = None,
        memory_bytes: int = 8 << 20,
    ) -> None:
        self._endpoints = dict(providers)
        self._since_handle_bytes = min(SINCE_HANDLE_BYTES, memory_bytes // 4)
        self._timeout = timeout
        self._dropped: Dropped = dropped or (lambda provider, kind: None)
        self._response_timeout = response_timeout
        self._resumes = resumes
        self._resumed = resumed

    def serves(self, model: ModelInfo) -> bool:
        return model.provider in self._endpoints

    async def _open(self, endpoint: Endpoint, model: ModelInfo) -> ClientConnection:
        try:
            return await connect(
                endpoint.url_for(model),
                additional_headers=endpoint.headers(),
                open_timeout=None,  # the caller's deadline covers the handshake and the acknowledgement
                close_timeout=1,
                max_size=MAX_PROVIDER_FRAME,
                max_queue=RECEIVE_QUEUE_FRAMES,
                compression=None,
            )
        except InvalidStatus as exc:
            raise UpstreamError(
                f"{endpoint.provider} refused the connection (HTTP {exc.response.status_code})"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise UpstreamError(f"cannot reach {endpoint.provider} ({type(exc).__name__})") from None

    @asynccontextmanager
    async def connect(self, session: SessionInfo) -> AsyncIterator[ProviderConnection]:
        endpoint = self._endpoints.get(session.model.provider)
        if endpoint is None:
            raise UpstreamError(f"{session.model.provider} is not configured on this deployment")
        websocket: ClientConnection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                websocket = await self._open(endpoint, session.model)
                connection = ProviderConnection(
                    websocket,
                    translator_for(session),
                    endpoint,
                    timeout=self._timeout,
                    dropped=self._dropped,
                    reconnect=lambda: self._open(endpoint, session.model),
                    response_timeout=self._response_timeout,
                    resumes=self._resumes,
                    resumed=self._resumed,
                    session_id=session.session_id,
                    since_handle_bytes=self._since_handle_bytes,
                )
                await connection.start()
        except BaseException as exc:
            if websocket is not None:
                await _close(websocket)
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    f"{endpoint.provider} did not acknowledge the session within {self._timeout:g} s"
                ) from None
            raise
        try:
            yield connection
        finally:
            await connection.aclose()
