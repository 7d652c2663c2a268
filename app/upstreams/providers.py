"""`providers`: each session on the model provider its model names (docs/protocol.md), translated both ways.

The translation is `app.providers` (pure); this module only does the I/O. One WebSocket per session,
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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from app.config import Settings
from app.events import encode_event, error_event
from app.exceptions import ProtocolError, SessionUpdateUnsupportedError, UpstreamError
from app.models import ModelInfo
from app.providers import Translator, translator_for
from app.providers.base import decode_message, redact
from app.upstreams.base import SessionInfo
from app.upstreams.outbox import Outbox

logger = logging.getLogger(__name__)

OUTBOX_EVENTS = 16  # server events translated and not yet taken by the session
RECEIVE_QUEUE_FRAMES = 1  # provider frames websockets buffers before it stops reading: the reader drains it
ERROR_BYTES = 256  # what an error event of ours (an event the provider cannot take) is counted as
MAX_PROVIDER_FRAME = 1 << 20  # bytes; an audio delta is a few KiB

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


async def _close(websocket: ClientConnection) -> None:
    """Close, shielded and bounded: the session may be ending because its task was cancelled."""
    closing = asyncio.get_running_loop().create_task(websocket.close())
    _CLOSING.add(closing)
    closing.add_done_callback(_CLOSING.discard)
    with suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closing), 2)


class ProviderConnection:
    """One session's connection to its provider, as the session loop sees an upstream."""

    def __init__(
        self,
        websocket: ClientConnection,
        translator: Translator,
        endpoint: Endpoint,
        *,
        timeout: float,
        dropped: Dropped,
    ) -> None:
        self._websocket = websocket
        self._translator = translator
        self._endpoint = endpoint
        self._provider = endpoint.provider
        self._timeout = timeout
        self._dropped = dropped
        self._outbox: Outbox[dict[str, Any] | UpstreamError] = Outbox(OUTBOX_EVENTS)
        self._reader: asyncio.Task[None] | None = None
        self._failure: UpstreamError | None = None
        self._transport: asyncio.WriteTransport | None = getattr(websocket, "transport", None)
        # Message types whose translation reads one string member, and that member.
        self._string_kinds: dict[str, str] = getattr(translator, "string_kinds", {})

    def buffered_bytes(self) -> int:
        """The events translated and not yet taken, counted as the provider frames they came from."""
        return self._outbox.held

    def on_growth(self, notify: Callable[[], None]) -> None:
        self._outbox.on_growth(notify)

    async def start(self) -> None:
        """Configure the provider's session and wait for its acknowledgement (the caller times it)."""
        for message in self._translator.opening():
            await self._send_message(message)
        while True:
            message = await self._next_message("before acknowledging the session")
            if self._translator.acknowledges(message):
                break
            for event in self._translate(message) or ():
                if event.get("type") == "error":
                    said = str(event["error"]["message"]).removeprefix(f"{self._provider}: ")
                    raise UpstreamError(f"{self._provider} refused the session: {said}")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def aclose(self) -> None:
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
        for message in messages:
            await self._send_message(message)

    async def _send_message(self, message: dict[str, Any]) -> None:
        text = encode_event(message)
        try:
            if self._cannot_wait(len(text)):
                await self._websocket.send(text)  # no timer for a send that returns at once
            else:
                async with asyncio.timeout(self._timeout):
                    await self._websocket.send(text)
        except TimeoutError:
            raise UpstreamError(
                f"{self._provider} stopped reading: a send waited over {self._timeout:g} s"
            ) from None
        except ConnectionClosed as exc:
            raise _closed(self._provider, exc, "mid-session") from None

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

    async def _next_message(self, when: str) -> dict[str, Any]:
        return (await self._next_frame(when))[0]

    async def _next_frame(self, when: str) -> tuple[dict[str, Any], int]:
        """The provider's next message, decoded, and the size of its frame."""
        try:
            frame = await self._websocket.recv()
        except ConnectionClosed as exc:
            raise _closed(self._provider, exc, when) from None
        message = decode_message(frame, self._string_kinds)
        if not isinstance(message, dict):
            raise UpstreamError(f"{self._provider} sent a frame that is not a JSON object")
        return message, len(frame)

    def _translate(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        try:
            events = self._translator.from_provider(message)
        except (KeyError, TypeError, AttributeError, ValueError):
            logger.info(
                "%s sent a malformed %s message; dropped", self._provider, self._translator.kind(message)
            )
            events = None
        if events is None:
            self._dropped(self._provider, self._translator.kind(message))
        return events

    async def _read(self) -> None:
        """Provider messages to the outbox until the provider closes or fails (then its error)."""
        try:
            while True:
                message, size = await self._next_frame("mid-session")
                events = self._translate(message) or []
                # The frame's size is held until its last event is taken: its events share its data.
                for index, event in enumerate(events, 1):
                    await self._outbox.put(event, size if index == len(events) else 0)
        except UpstreamError as exc:
            await self._outbox.put(exc, 0)


class ProvidersUpstream:
    """Connects each session to the provider of its model, among those configured."""

    def __init__(
        self,
        providers: Mapping[str, Endpoint],
        *,
        timeout: float,
        dropped: Dropped | None = None,
    ) -> None:
        self._endpoints = dict(providers)
        self._timeout = timeout
        self._dropped: Dropped = dropped or (lambda provider, kind: None)

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
