"""Resumption (Gemini): a new connection takes over the session; the client messages it missed follow."""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.exceptions import UpstreamError
from app.upstreams.providers.link import EVENT_BYTES, ProviderLink, _close_later, _closed

logger = logging.getLogger(__name__)


class ResumableLink(ProviderLink):
    """A `ProviderLink` that resumes its session on a new connection (`reconnect`) with the
    translator's `resumption_opening()`; client messages meanwhile are held, then sent in order."""

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
            self._queue(event, EVENT_BYTES)
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
