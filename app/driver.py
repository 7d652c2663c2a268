"""Runs a session core (`app.session`) over the client's WebSocket and the upstream connection.

One `asyncio.TaskGroup`: the clock (limits, shutdown) in a child task, the client's frames in the
session's own task (rate-limited, one at a time, yielding after each) and, once started, the
upstream's events in a nested group. Whatever the core ends the session with raises `Ended`; the
groups cancel the rest, and `run` sends the core's last word and closes: the one place a session
ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from typing import Any, Protocol

from app.clock import Clock
from app.exceptions import UpstreamError
from app.session import (
    Action,
    Close,
    Connect,
    SendClient,
    SendUpstream,
    SessionCore,
    Terminate,
)
from app.upstreams.base import Buffered, Filling, SessionInfo, Upstream, UpstreamConnection

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


class SessionDriver:
    """The I/O around one `SessionCore`: sockets, tasks and the clock."""

    def __init__(self, core: SessionCore, transport: Transport, *, upstream: Upstream, clock: Clock) -> None:
        self.core = core
        self._transport = transport
        self._upstream = upstream
        self._clock = clock
        self._nudge = asyncio.Event()
        self._connection: UpstreamConnection | None = None
        self._buffered: Buffered | None = None  # the connection, when it says what it holds

    def shutdown(self) -> None:
        """End the session with `server_shutdown` now (from any task; returns at once)."""
        self.core.shutdown()
        self._nudge.set()

    async def run(self) -> None:
        """Run the session until the core ends it or the client goes; then its last word and close."""
        try:
            # Each group's own task runs one loop in the body rather than waiting in the group's
            # exit: on Python 3.11 a child failing during that wait leaves the task's cancellation
            # count raised for good (fixed in 3.12).
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch_clock())
                await self._converse()
        except* Ended as ended:
            _clear_frames(ended)
        finally:
            self._connection = self._buffered = None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled from outside while a task ended the group: the group raised our `Ended`
            # instead of the cancellation (Python 3.11's TaskGroup), which must still propagate.
            # A cancel scope (anyio's) delivers its own again at the next suspension.
            await asyncio.sleep(0)
            raise asyncio.CancelledError
        await self._finish()

    async def _finish(self) -> None:
        ending = self.core.ending
        if ending is None:
            logger.info("session %s ended: the client went", self.core.id)
            return
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
        logger.info("session %s ended: %s", self.core.id, reason)

    # Tasks -------------------------------------------------------------------------------------

    async def _watch_clock(self) -> None:
        """Wake at the core's next deadline (or when nudged) and let it check its limits."""
        while True:
            # Checked before each wait: a shutdown asked before this task first ran is not lost.
            await self._apply(self.core.tick(self._clock.now()))
            await self._account()
            self._nudge.clear()
            timer = self._clock.call_at(self.core.next_deadline(), self._nudge.set)
            try:
                await self._nudge.wait()
            finally:
                timer.cancel()

    async def _converse(self) -> None:
        """Client frames until a valid start, then the upstream's connection and both directions."""
        info: SessionInfo | None = None
        while info is None:
            info = await self._apply(self.core.receive_client(await self._frame(), self._clock.now()))
        try:
            async with self._upstream.connect(info) as connection:
                self._connection = connection
                self._buffered = connection if isinstance(connection, Buffered) else None
                if self._buffered is not None and isinstance(connection, Filling):
                    # Its reader fills it while this task may wait on the client.
                    connection.on_growth(self._grown)
                await self._apply(self.core.connected(self._clock.now()))
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._from_upstream(connection))
                    await self._from_client()
        except UpstreamError as exc:
            await self._apply(self.core.upstream_failed(exc.message))

    async def _from_client(self) -> None:
        while True:
            await self._apply(self.core.receive_client(await self._frame(), self._clock.now()))
            # Yield after every frame: queued frames arrive without a suspension, and one session
            # must not hold the loop while its client floods.
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
            await self._account()

    async def _frame(self) -> str | bytes:
        """The next client frame, once the rate limit allows reading it."""
        ready = self.core.read_after()
        if ready > self._clock.now():
            await self._clock.sleep_until(ready)
        frame = await self._transport.receive()
        if frame is None:
            self.core.client_gone()
            raise Ended
        return frame

    def _grown(self) -> None:
        """The connection's buffers grew: past the budget, wake the clock task to end the session."""
        if self._buffered is not None and not self.core.fits("upstream", self._buffered.buffered_bytes()):
            self._nudge.set()

    async def _account(self) -> None:
        """Count what the upstream connection holds against the session's budget."""
        if self._buffered is not None:
            await self._apply(self.core.holding("upstream", self._buffered.buffered_bytes()))

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
                await self._account()
            elif isinstance(action, Connect):
                info = action.info
            elif isinstance(action, Close | Terminate):
                raise Ended
        return info
