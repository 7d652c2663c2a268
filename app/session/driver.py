"""Runs a session core (`app.session.core`) over the client's WebSocket and the upstream connection.

The client's frames in the session's own task (rate-limited, one at a time, yielding after each)
and, once started, the upstream's events in a task group beside it; the clock (limits, shutdown) is
a timer on the event loop that expires the session's scope (`asyncio.timeout`) when the core says a
limit has passed. Whatever the core ends the session with raises `Ended` (or, from the clock, leaves
that scope); the group cancels the rest, and `run` sends the core's last word and closes: the one
place a session ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from typing import Any, Protocol, cast

from app.clock import Clock, Timer
from app.exceptions import UpstreamError
from app.session.actions import Action, Close, Connect, SendClient, SendUpstream, Terminate
from app.session.core import SessionCore
from app.session.upstream import Buffered, Filling, SessionInfo, Upstream, UpstreamConnection

logger = logging.getLogger(__name__)

CLOSE_SECONDS = 5.0  # the most a session's last word and close may take (a client that stops reading)


class Transport(Protocol):
    """The client side of a session: the accepted WebSocket, or a test double."""

    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the client has gone."""
        ...

    async def send(self, event: dict[str, Any] | str) -> None:
        """Send one event (a `str` is already encoded JSON)."""
        ...

    # Optional: `waiting() -> bool`, whether a frame is queued (receive would return at once);
    # without it the session yields after every frame.

    async def close(self, code: int, reason: str = "") -> None: ...


class Ended(Exception):
    """The core has ended the session (or the client went): leave the task group."""


def new_session_id() -> str:
    # An identifier, not a secret (nothing accepts it back): 96 random bits from the process's
    # generator, without the system call a `secrets` token costs on every handshake.
    return f"sess_{random.getrandbits(96):024x}"


def _clear_frames(error: BaseException) -> None:
    """Free the finished frames an ended session's exceptions hold.

    Python 3.11's TaskGroup raises its group from a frame that keeps the group in a local: a cycle
    (group -> traceback -> frame -> group) that holds the session, its connection and uvicorn's
    protocol objects until a garbage collection; clearing the frames lets reference counting free
    them at once.
    """
    traceback.clear_frames(error.__traceback__)
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            _clear_frames(inner)


class _NoTimer:
    def cancel(self) -> None:
        return None


_NO_TIMER = _NoTimer()


class SessionDriver:
    """The I/O around one `SessionCore`: sockets, tasks and the clock."""

    def __init__(self, core: SessionCore, transport: Transport, *, upstream: Upstream, clock: Clock) -> None:
        self.core = core
        self._transport = transport
        self._upstream = upstream
        self._clock = clock
        self._scope: asyncio.Timeout | None = None  # the clock's scope, while `run` runs
        self._timer: Timer = _NO_TIMER
        self._ended_by_clock = False
        self._shutdown = False
        self._connection: UpstreamConnection | None = None
        self._buffered: Buffered | None = None  # the connection, when it says what it holds

    def shutdown(self) -> None:
        """End the session with `server_shutdown` now (from any task; returns at once)."""
        self.core.shutdown()
        self._shutdown = True
        if self._scope is not None:
            asyncio.get_running_loop().call_soon(self._on_clock)

    def revoke(self, message: str) -> None:
        """End the session with `revoked` now (from any task; returns at once)."""
        self.core.revoke(message)
        self._shutdown = True  # the same path as a shutdown: the clock's next tick ends it
        if self._scope is not None:
            asyncio.get_running_loop().call_soon(self._on_clock)

    async def run(self) -> None:
        """Run the session until the core ends it or the client goes; then its last word and close.

        The limits are a timer on the event loop, not a task: when the core says a limit has
        passed (or a shutdown was asked for), the timer expires the session's scope, an
        `asyncio.timeout` without a deadline of its own; the session leaves it (asyncio takes back
        its own cancellation) and says the last word. A task per session for the clock cost each
        handshake a task and a task group, and each idle session their memory (PERFORMANCE.md).
        """
        self._arm()
        try:
            async with asyncio.timeout(None) as scope:
                self._scope = scope
                if self._shutdown:  # asked before this task ran: the drain must still reach it
                    asyncio.get_running_loop().call_soon(self._on_clock)
                await self._converse()
        except* Ended as ended:
            _clear_frames(ended)
        except* TimeoutError as expired:
            if not (self._ended_by_clock and scope.expired()):
                raise  # not the clock's: an error to report
            _clear_frames(expired)
        finally:
            self._scope = None
            self._timer.cancel()
            self._timer = _NO_TIMER  # the timer refers to this driver: drop the cycle now
            self._connection = self._buffered = None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled from outside while a task ended the group: the group raised our `Ended`
            # instead of the cancellation (Python 3.11's TaskGroup), which must still propagate.
            await asyncio.sleep(0)
            raise asyncio.CancelledError
        await self._finish()

    def _arm(self) -> None:
        """The timer for the core's next deadline (start, idle, maximum length)."""
        self._timer = self._clock.call_at(self.core.next_deadline(), self._on_clock)

    def _on_clock(self) -> None:
        """A deadline passed or a shutdown was asked for: the core checks its limits; re-arm, or end."""
        scope = self._scope
        if scope is None or self._ended_by_clock:
            return
        self._timer.cancel()
        # A tick's only actions end the session; so do the budget's, past it.
        ended = self.core.tick(self._clock.now())
        if not ended and self._buffered is not None:
            ended = self.core.holding("upstream", self._buffered.buffered_bytes())
        if ended:
            self._ended_by_clock = True
            scope.reschedule(asyncio.get_running_loop().time())  # expires now: the session leaves it
        else:
            self._arm()

    @property
    def end_code(self) -> str:
        """How the session ended, as a code: `client_gone` (the client closed or vanished), a
        `session.terminating` code, or a close reason (`frame_too_large`, `session_not_started`)."""
        ending = self.core.ending
        if ending is None:
            return "client_gone"
        if isinstance(ending, Terminate):
            return ending.code
        return ending.reason.replace(" ", "_")

    def usage_fields(self) -> dict[str, object]:
        """The session's usage totals for its session-end log line: audio seconds and provider
        tokens each way (docs/operations.md, "Usage")."""
        return self.core.usage.fields()

    async def _finish(self) -> None:
        ending = self.core.ending
        if ending is None:
            return  # the client went: nothing left to say (the end is logged by whoever ran it)
        if isinstance(ending, Terminate):
            code, reason = ending.close_code, ending.code
        else:
            code, reason = ending.code, ending.reason
        try:
            # Both under one timeout: a client that stops reading blocks the close frame as well.
            async with asyncio.timeout(CLOSE_SECONDS):
                if isinstance(ending, Terminate):
                    await self._transport.send(ending.event)
                await self._transport.close(code, reason)
        except TimeoutError:
            logger.info(
                "session %s: its close took over %g s; left to the server", self.core.id, CLOSE_SECONDS
            )

    # Tasks -------------------------------------------------------------------------------------

    async def _converse(self) -> None:
        """Client frames until a valid start, then the upstream's connection and both directions."""
        info = await self._from_client(until_start=True)
        assert info is not None  # noqa: S101 - only a start ends that loop without raising
        try:
            async with self._upstream.connect(info) as connection:
                self._connection = connection
                # Attribute look-ups, not isinstance() on runtime-checkable Protocols (which inspect
                # every member on each call: microseconds per handshake).
                buffered = callable(getattr(connection, "buffered_bytes", None))
                self._buffered = cast(Buffered, connection) if buffered else None
                if self._buffered is not None and callable(getattr(connection, "on_growth", None)):
                    # Its reader fills it while this task may wait on the client.
                    cast(Filling, connection).on_growth(self._grown)
                await self._apply(self.core.connected(self._clock.now()))
                async with asyncio.TaskGroup() as group:
                    pump = group.create_task(self._from_upstream(connection))
                    try:
                        await self._from_client()
                    except Ended:
                        # Ended from the client's side (it went, or its frame ended the session):
                        # the pump is stopped and the group left without an exception group, whose
                        # raising and matching cost more than the rest of a short session's end.
                        pump.cancel()
        except UpstreamError as exc:
            await self._apply(self.core.upstream_failed(exc.message))

    async def _from_client(self, *, until_start: bool = False) -> SessionInfo | None:
        """Client frames, each once the rate limit allows reading it, until the client goes or the
        session ends (`Ended`), or, with `until_start`, until a valid start (its `SessionInfo`)."""
        waiting = getattr(self._transport, "waiting", None)
        while True:
            ready = self.core.read_after()
            if ready > self._clock.now():
                await self._clock.sleep_until(ready)
            frame = await self._transport.receive()
            if frame is None:
                self.core.client_gone()
                raise Ended
            info = await self._apply(self.core.receive_client(frame, self._clock.now()))
            if until_start and info is not None:
                return info
            # Yield after every frame: queued frames arrive without a suspension, and one session
            # must not hold the loop while its client floods. When no frame waits, reading the next
            # one suspends the task anyway: the yield would only cost a pass of the loop.
            if waiting is None or waiting():
                await asyncio.sleep(0)

    async def _from_upstream(self, connection: UpstreamConnection) -> None:
        while True:
            try:
                event = await connection.receive()
            except UpstreamError as exc:
                await self._apply(self.core.upstream_failed(exc.message))
                return
            except Exception:
                # A bug in an adapter: the session must end, not hang with one direction dead.
                logger.exception("session %s: the upstream pump failed", self.core.id)
                await self._apply(self.core.upstream_failed("the connection to the model failed"))
                return
            if event is None:
                await self._apply(self.core.upstream_ended())
                return
            await self._apply(self.core.receive_upstream(event))
            held = self._held()
            if held:
                await self._apply(held)

    def _grown(self) -> None:
        """The connection's buffers grew: past the budget, the clock's check ends the session now."""
        if self._buffered is not None and not self.core.fits("upstream", self._buffered.buffered_bytes()):
            self._on_clock()

    def _held(self) -> list[Action]:
        """Count what the upstream connection holds against the session's budget: the core's answer
        (nothing, or the end), carried out by the caller only when there is one."""
        if self._buffered is None:
            return []
        return self.core.holding("upstream", self._buffered.buffered_bytes())

    async def _apply(self, actions: list[Action]) -> SessionInfo | None:
        """Carry out the core's actions in order; a `Connect` is returned to the caller."""
        info = None
        for action in actions:
            if isinstance(action, SendClient):
                await self._transport.send(action.event)
            elif isinstance(action, SendUpstream):
                connection = self._connection
                assert connection is not None  # noqa: S101 - the core forwards only once started
                try:
                    await connection.send(action.event)
                except UpstreamError as exc:
                    await self._apply(self.core.upstream_failed(exc.message))
                held = self._held()
                if held:
                    await self._apply(held)
            elif isinstance(action, Connect):
                info = action.info
            elif isinstance(action, Close | Terminate):
                raise Ended
        return info
