"""`relay`: forward a session to a WebSocket upstream that speaks this protocol (docs/protocol.md).

The upstream is told the **effective** config in its `session.start` and authenticated with the
server-side key from configuration (never the browser's ticket). Back-pressure is end to end: each
send waits for the socket's write buffer to drain; a reader task moves the upstream's frames to a
bounded outbox whose bytes count against the session's memory budget, and stops reading while it is
full (websockets' own receive queue holds one frame), so a slow side slows the other instead of
filling memory. Every wait has a timeout; failures are UpstreamError.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus

from app.exceptions import UpstreamError
from app.session.events import encode_event
from app.session.upstream import SessionInfo
from app.upstreams.outbox import Outbox

logger = logging.getLogger(__name__)

OUTBOX_FRAMES = 16  # frames read from the upstream and not yet taken by the session
RECEIVE_QUEUE_FRAMES = 1  # frames websockets buffers before it stops reading: the reader drains it


def _closed(exc: ConnectionClosed) -> UpstreamError:
    return UpstreamError(f"the upstream closed the connection ({exc.rcvd.code if exc.rcvd else 1006})")


class RelayConnection:
    """One relayed session. Once started, a reader task moves frames to a bounded, counted outbox."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket
        self._outbox: Outbox[str | UpstreamError | None] = Outbox(OUTBOX_FRAMES)
        self._reader: asyncio.Task[None] | None = None
        self._ended: UpstreamError | None = None

    def buffered_bytes(self) -> int:
        """The frames read and not yet relayed (websockets holds at most `RECEIVE_QUEUE_FRAMES` more)."""
        return self._outbox.held

    def on_growth(self, notify: Callable[[], None]) -> None:
        self._outbox.on_growth(notify)

    async def send(self, event: dict[str, Any]) -> None:
        # No timer per frame: a send waits only when the write buffer is over its high-water mark,
        # and an upstream that stops reading fails websockets' keepalive (ping_timeout) and closes.
        try:
            await self._websocket.send(encode_event(event))
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive(self) -> str | None:
        """The upstream's next frame as received: relayed unchanged, not decoded and re-encoded."""
        if self._ended is not None:
            raise self._ended
        item = await self._outbox.get()
        if isinstance(item, UpstreamError):
            self._ended = item
            raise item
        return item

    def start_reading(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])  # a cancellation of this task still propagates

    async def _read(self) -> None:
        """Frames to the outbox until the upstream closes (then None) or fails (then its error)."""
        try:
            while True:
                frame = await self._frame()
                if frame is None:
                    await self._outbox.put(None, 0)
                    return
                await self._outbox.put(frame, len(frame))
        except UpstreamError as exc:
            await self._outbox.put(exc, 0)
        except Exception:
            # A bug here must end the session, not leave it waiting on an outbox nobody fills.
            logger.exception("the relay's reader failed")
            await self._outbox.put(UpstreamError("the connection to the upstream failed"), 0)

    async def _frame(self) -> str | None:
        try:
            frame = await self._websocket.recv()
        except ConnectionClosedOK:
            return None
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        if not isinstance(frame, str) or not frame.startswith("{"):
            raise UpstreamError("the upstream sent a frame that is not a JSON object")
        return frame

    async def receive_event(self) -> dict[str, Any] | None:
        """The upstream's next frame, decoded (while the session starts, before the reader runs)."""
        frame = await self._frame()
        if frame is None:
            return None
        try:
            event = json.loads(frame)
        except ValueError:
            raise UpstreamError("the upstream sent a frame that is not JSON") from None
        if not isinstance(event, dict):
            raise UpstreamError("the upstream sent a frame that is not a JSON object")
        return event


class RelayUpstream:
    """Connects each session to `url` with `Authorization: Bearer <api_key>`."""

    def __init__(
        self, url: str, *, api_key: str | None, timeout: float, max_frame_bytes: int = 1 << 22
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._timeout = timeout
        self._max_frame_bytes = max_frame_bytes

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            return await connect(
                self._url,
                additional_headers=headers,
                subprotocols=["realtime"],  # type: ignore[list-item]
                open_timeout=self._timeout,
                close_timeout=1,
                max_size=self._max_frame_bytes,
                max_queue=RECEIVE_QUEUE_FRAMES,
                compression=None,
            )
        except InvalidStatus as exc:
            raise UpstreamError(
                f"the upstream refused the session (HTTP {exc.response.status_code})"
            ) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise UpstreamError(f"cannot reach the upstream ({type(exc).__name__})") from None

    async def _start(self, connection: RelayConnection, session: SessionInfo) -> None:
        await connection.send({"type": "session.start", "config": session.config})
        with anyio.move_on_after(self._timeout) as scope:
            while True:
                event = await connection.receive_event()
                if event is None:
                    raise UpstreamError("the upstream closed before the session started")
                if event.get("type") == "session.started":
                    return
                if event.get("type") in ("error", "session.terminating"):
                    error = event.get("error") or {}
                    raise UpstreamError(
                        f"the upstream refused the session: {error.get('code')}: {error.get('message')}"
                    )
        if scope.cancelled_caught:
            raise UpstreamError(f"the upstream did not start the session within {self._timeout:g} s")

    @asynccontextmanager
    async def connect(self, session: SessionInfo) -> AsyncIterator[RelayConnection]:
        websocket = await self._open()
        try:
            connection = RelayConnection(websocket)
            await self._start(connection, session)
            connection.start_reading()
            try:
                yield connection
            finally:
                await connection.stop_reading()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await websocket.close()
