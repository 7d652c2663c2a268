"""One session's WebSocket to its provider: where it goes, its state, frames sent and read in time."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from app.exceptions import UpstreamError
from app.session.events import encode_event
from app.session.models import ModelInfo
from app.upstreams.providers import Translator
from app.upstreams.providers.base import decode_message, redact
from app.upstreams.providers.silence import SilenceCheck

logger = logging.getLogger(__name__)

ERROR_BYTES = 256  # what an error event of ours (an event the provider cannot take) is counted as
EVENT_BYTES = 256  # what each translated event is counted as, besides the frame it came from
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


class ProviderLink(SilenceCheck):
    """The connection under `ProviderConnection`: what it holds, and one frame sent or read at a time."""

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
        # Events translated and not yet taken (the rest of a message that became several, our errors).
        self._pending: deque[tuple[dict[str, Any], int]] = deque()
        self._pending_bytes = 0
        self._notify: Callable[[], None] = lambda: None
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
        self._resuming = False
        self.resumptions = 0
        self._answer_due: float | None = None  # loop time by which the provider must say something
        self._silence: asyncio.TimerHandle | None = None  # checks `_answer_due` when it may have passed
        self._receiving: asyncio.Task[Any] | None = None  # the task waiting on the provider, if one is
        self._interrupting = False  # that wait was cancelled by this connection (`_interrupt`)
        self._silenced = False  # ... by the silence check

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

    def _queue(self, event: dict[str, Any], size: int) -> None:
        """An event of ours for the session, counted as `size` bytes until `receive` hands it over."""
        self._pending.append((event, size))
        self._pending_bytes += size
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
        the connection is open, writing is not paused, and the write buffer stays under its
        high-water mark with the frame in it (at most 4 bytes a character and its header), so
        writing it cannot pause."""
        transport = self._transport
        websocket = self._websocket
        if transport is None or websocket.paused or websocket.protocol.state is not State.OPEN:
            return False
        return transport.get_write_buffer_size() + 4 * chars + 16 <= transport.get_write_buffer_limits()[1]

    def _write(self, text: str) -> None:
        """Write one frame at once, when `_cannot_wait`: websockets' sans-I/O protocol frames it
        (its public `send_text`/`data_to_send`), without `send`'s context manager and drain, which
        cost more than the frame; nothing can wait, so they have nothing to do."""
        protocol = self._websocket.protocol
        transport = self._transport
        assert transport is not None  # noqa: S101 - `_cannot_wait` saw it
        protocol.send_text(text.encode())
        for data in protocol.data_to_send():
            transport.write(data)

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
