"""The session loop after `accept()` (SPEC section 6): start, overlay, limits, the two directions.

A session is the connection's own task, which pumps client frames to the upstream, plus one task
that pumps upstream events to the client; the limits (start deadline, idle timeout, maximum
duration, on the injected clock) are a timer. Whatever ends the session (`terminate` or a close)
cancels the tasks it is not running in; `terminate` is the one way the server ends a session.

Plain asyncio tasks rather than an anyio task group: under load the task group and its cancel
scopes were the largest single cost of a handshake after the signature check (bench/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any, Protocol

from app.clock import Clock, Timer
from app.config import Settings
from app.events import SessionStart, SessionUpdate, error_event, parse_event
from app.exceptions import (
    AlreadyStartedError,
    ConfigError,
    InvalidEventError,
    RealtimeError,
    SessionNotStartedError,
    SessionUpdateUnsupportedError,
    UpstreamError,
)
from app.limits import Limits
from app.models import ModelInfo, ModelRegistry
from app.session import Binding, describe, start_config, update_config
from app.upstreams.base import SessionInfo, Upstream, UpstreamConnection

logger = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1).
NORMAL, POLICY, TOO_BIG, SERVER_ERROR, RESTART = 1000, 1008, 1009, 1011, 1012
TERMINATING = '"session.terminating"'
CLOSE_CODES = {"start_timeout": POLICY, "upstream_error": SERVER_ERROR, "server_shutdown": RESTART}


class Transport(Protocol):
    """The client side of a session: the accepted WebSocket, or a test double."""

    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the client has gone."""
        ...

    async def send(self, event: dict[str, Any] | str) -> None:
        """Send one event (a `str` is already encoded JSON)."""
        ...

    async def close(self, code: int, reason: str = "") -> None: ...


class _NoTimer:
    def cancel(self) -> None:
        return None


_NO_TIMER = _NoTimer()


class Session:
    """One accepted connection, from the first frame to the close."""

    def __init__(
        self,
        transport: Transport,
        *,
        project: str,
        binding: Binding | None,
        settings: Settings,
        registry: ModelRegistry,
        upstream: Upstream,
        clock: Clock,
    ) -> None:
        # An identifier, not a secret (nothing accepts it back): 96 random bits from the process's
        # generator, without the system call a `secrets` token costs on every handshake.
        self.id = f"sess_{random.getrandbits(96):024x}"
        self.project = project
        self._transport = transport
        self._binding = binding
        self._settings = settings
        self._registry = registry
        self._upstream = upstream
        self._clock = clock
        self._send_lock = asyncio.Lock()  # uncontended, it never yields (anyio's Lock always does)
        self._timer: Timer = _NO_TIMER
        self._closer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None  # the connection's task, while `run` runs
        self._pump: asyncio.Task[None] | None = None  # upstream to client, once started
        self._ender: asyncio.Task[Any] | None = None  # the task that is closing the session
        self._cancelled_run = False  # `_cancel` cancelled `_task`: run() absorbs that CancelledError
        self._limits = Limits(settings, opened_at=clock.now())
        self._closing = False
        self._upstream_ended: str | None = None
        self.config: dict[str, Any] = {}
        self.model: ModelInfo | None = None

    # The one way out -------------------------------------------------------------------

    async def terminate(self, code: str, message: str) -> None:
        """Tell the client why with `session.terminating`, close, and end the session's tasks."""
        event = {"type": "session.terminating", "error": {"code": code, "message": message}}
        await self._end(CLOSE_CODES.get(code, NORMAL), code, event)

    async def _close(self, close_code: int, reason: str) -> None:
        """Close without a `session.terminating` (frame too large, not started, upstream said why)."""
        await self._end(close_code, reason, None)

    async def _end(self, close_code: int, reason: str, last: dict[str, Any] | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._ender = asyncio.current_task()
        try:
            async with asyncio.timeout(5):
                try:
                    if last is not None:
                        async with self._send_lock:
                            await self._transport.send(last)
                finally:
                    await self._transport.close(close_code, reason)
        except TimeoutError:
            logger.warning("session %s: the close took over 5 s; ending it anyway", self.id)
        logger.info("session %s ended: %s", self.id, reason)
        self._cancel()

    def _cancel(self) -> None:
        """Stop the session's tasks, except the one calling (it returns on its own: `_closing` is set)."""
        current = asyncio.current_task()
        if self._pump is not None and self._pump is not current:
            self._pump.cancel()
        if self._task is not None and self._task is not current and not self._cancelled_run:
            self._cancelled_run = True
            self._task.cancel()

    def _pump_done(self, pump: asyncio.Task[None]) -> None:
        """A pump that failed with a bug (not an UpstreamError) ends the session as an upstream error."""
        if pump.cancelled() or pump.exception() is None:
            return
        logger.error("session %s: the upstream pump failed", self.id, exc_info=pump.exception())
        self._terminate_soon("upstream_error", "the connection to the model failed")

    def _terminate_soon(self, code: str, message: str) -> None:
        """`terminate` from a callback, in a task of its own (kept, so it is not collected)."""
        self._closer = asyncio.get_running_loop().create_task(self.terminate(code, message))

    async def _send(self, event: dict[str, Any] | str) -> None:
        """Send one event, unless the session is ending: nothing follows `session.terminating` or a close.

        A pump may be waiting for the lock while `terminate` closes the socket; sending then would fail.
        """
        async with self._send_lock:
            if self._closing:
                return
            await self._transport.send(event)

    # The loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the session in the calling task until the client goes or the session is ended."""
        task = self._task = asyncio.current_task()
        self._arm()
        try:
            info = await self._await_start()
            if info is None:
                return
            try:
                async with self._upstream.connect(info) as connection:
                    await self._send(describe(self.id, self.config, info.model, self._binding))
                    self._limits.started = True
                    await self._pump_both(connection)
            except UpstreamError as exc:
                await self.terminate("upstream_error", exc.message)
        except asyncio.CancelledError:
            # Absorb the cancellation `_cancel` asked for, and only that one (a server shutdown
            # cancelling this task as well still propagates).
            if not self._cancelled_run or task is None or task.uncancel() > 0:
                raise
        finally:
            # No cancellation is asked for once this task leaves run(): it is uvicorn's again.
            self._task = None
            self._timer.cancel()
            # Drop the references that make cycles (session -> pump task -> its CancelledError's
            # traceback -> the pump's frame -> session; session -> timer -> session), so a finished
            # session, its connection and uvicorn's protocol objects are freed at once by reference
            # counting instead of waiting for the garbage collector.
            self._timer, self._pump, self._ender = _NO_TIMER, None, None

    async def _pump_both(self, connection: UpstreamConnection) -> None:
        """Client to upstream in this task, upstream to client in another, until either side ends."""
        pump = self._pump = asyncio.get_running_loop().create_task(self._pump_upstream(connection))
        pump.add_done_callback(self._pump_done)
        try:
            await self._pump_client(connection)
        finally:
            if pump is not self._ender:
                pump.cancel()  # unless it is closing the session: then its close is let finish
            await asyncio.wait((pump,))

    def _arm(self) -> None:
        """Set the timer for the nearest deadline of the session's limits."""
        self._timer = self._clock.call_at(self._limits.deadline(), self._on_timer)

    def _on_timer(self) -> None:
        """A limit may have passed (the idle deadline moves with each frame): end the session, or re-arm."""
        if self._closing:
            return
        passed = self._limits.passed(self._clock.now())
        if passed is None:
            self._arm()
        else:
            self._terminate_soon(*passed)

    async def _frame(self) -> str | bytes | None:
        """The next client frame; None once the client has gone or sent a frame over the limit."""
        frame = await self._transport.receive()
        if frame is None:
            return None  # the client went: the caller returns and the session unwinds
        self._limits.last_frame = self._clock.now()
        size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8"))
        if size > self._settings.max_frame_bytes:
            await self._close(TOO_BIG, "frame too large")
            return None
        return frame

    async def _await_start(self) -> SessionInfo | None:
        """Frames until a valid `session.start`; a failed one may be retried until the deadline."""
        while not self._closing:
            frame = await self._frame()
            if frame is None:
                return None
            try:
                event = parse_event(frame)
            except InvalidEventError:
                event = None
            if not isinstance(event, SessionStart):
                await self._send(error_event(SessionNotStartedError("the first event must be session.start")))
                await self._close(POLICY, "session not started")
                return None
            try:
                config, model = start_config(
                    {} if event.config is None else event.config, self._binding, self._registry
                )
            except ConfigError as exc:
                await self._send(error_event(exc))
                continue
            self.config, self.model = config, model
            return SessionInfo(self.id, self.project, config, model)
        return None

    async def _pump_client(self, connection: UpstreamConnection) -> None:
        while not self._closing:
            frame = await self._frame()
            if frame is None:
                return
            try:
                event = parse_event(frame)
                if isinstance(event, SessionStart):
                    raise AlreadyStartedError("the session has already started; use session.update")
                if isinstance(event, SessionUpdate):
                    await self._update(event, connection)
                    continue
            except RealtimeError as exc:
                await self._send(error_event(exc))
                continue
            await self._forward(connection, event.model_dump(exclude_none=True))

    async def _update(self, event: SessionUpdate, connection: UpstreamConnection) -> None:
        assert self.model is not None  # noqa: S101 - updates come after the start
        if not self.model.session_update:
            raise SessionUpdateUnsupportedError(
                f"{self.model.id} ignores session.update: set the config in session.start"
            )
        before = self.config
        self.config, self.model = update_config(
            self.config, self.model, event.config, self._binding, self._registry
        )
        changes: dict[str, Any] = {name: None for name in before if name not in self.config}
        changes.update(self.config)
        await self._forward(connection, {"type": "session.update", "config": changes})
        await self._send({"type": "session.updated"})

    async def _forward(self, connection: UpstreamConnection, event: dict[str, Any]) -> None:
        try:
            await connection.send(event)
        except UpstreamError as exc:
            await self.terminate("upstream_error", exc.message)

    async def _pump_upstream(self, connection: UpstreamConnection) -> None:
        while not self._closing:
            try:
                event = await connection.receive()
            except UpstreamError as exc:
                await self._upstream_gone(exc.message)
                return
            if event is None:
                await self._upstream_gone("the upstream ended the session without a reason")
                return
            if isinstance(event, str):
                # A relayed frame goes out as received; only an ending is looked into.
                if TERMINATING in event:
                    self._note_ending(json.loads(event))
            elif event.get("type") == "session.terminating":
                self._note_ending(event)
            await self._send(event)

    async def _upstream_gone(self, message: str) -> None:
        """The upstream connection ended: close as it announced, or as an upstream failure."""
        if self._upstream_ended:
            await self._close(CLOSE_CODES.get(self._upstream_ended, NORMAL), self._upstream_ended)
        else:
            await self.terminate("upstream_error", message)

    def _note_ending(self, event: dict[str, Any]) -> None:
        if event.get("type") == "session.terminating":
            self._upstream_ended = str((event.get("error") or {}).get("code") or "upstream_error")
