"""`relay`: forward a session to a WebSocket upstream that speaks this protocol (SPEC 6.5).

The upstream is told the **effective** config in its `session.start` and authenticated with the
server-side key from configuration (never the browser's ticket). Back-pressure is end to end: each
send waits for the socket's write buffer to drain and websockets' receive queue is bounded, so a slow
side slows the other instead of filling memory. Every wait has a timeout; failures are UpstreamError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus

from app.events import encode_event
from app.exceptions import UpstreamError
from app.upstreams.base import SessionInfo

logger = logging.getLogger(__name__)

RECEIVE_QUEUE_FRAMES = 16


class RelayConnection:
    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket

    async def send(self, event: dict[str, Any]) -> None:
        # No timer per frame: a send waits only when the write buffer is over its high-water mark,
        # and an upstream that stops reading fails websockets' keepalive (ping_timeout) and closes.
        try:
            await self._websocket.send(encode_event(event))
        except ConnectionClosed as exc:
            raise UpstreamError(
                f"the upstream closed the connection ({exc.rcvd.code if exc.rcvd else 1006})"
            ) from None

    async def receive(self) -> str | None:
        """The upstream's next frame as received: relayed unchanged, not decoded and re-encoded."""
        try:
            frame = await self._websocket.recv()
        except ConnectionClosedOK:
            return None
        except ConnectionClosed as exc:
            raise UpstreamError(
                f"the upstream closed the connection ({exc.rcvd.code if exc.rcvd else 1006})"
            ) from None
        if not isinstance(frame, str) or not frame.startswith("{"):
            raise UpstreamError("the upstream sent a frame that is not a JSON object")
        return frame

    async def receive_event(self) -> dict[str, Any] | None:
        """The upstream's next frame, decoded (while the session starts)."""
        frame = await self.receive()
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
            yield connection
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await websocket.close()
