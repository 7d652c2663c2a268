"""Clock skew between an edge and its replay store: measured at start-up and every minute, judged.

An edge decides from its own clock whether a ticket is still valid, and Redis decides from its clock
how long it keeps the used id. The store keeps ids a skew margin longer than the ticket lives, so an
offset under the margin is harmless; past the leeway it is worth a warning, past the margin the edge
stops being ready (`/readyz` 503), because a used ticket could then be accepted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.edge.replay import ReplayStore
from app.exceptions import UnavailableError

logger = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 60.0


def describe(offset: float) -> str:
    """`this edge's clock is 8.0 s behind the replay store's` (a positive offset: the store is ahead)."""
    side = "behind" if offset > 0 else "ahead of"
    return f"this edge's clock is {abs(offset):.1f} s {side} the replay store's"


def judge(offset: float | None, *, leeway: int, margin: int) -> tuple[str, str | None]:
    """("ok" | "warn" | "unready", what to say): past the leeway warn, past the margin not ready."""
    if offset is None or abs(offset) <= leeway:
        return "ok", None
    if abs(offset) <= margin:
        return "warn", (
            f"{describe(offset)}, more than the {leeway} s leeway: tickets may be refused as expired "
            "or not yet valid; synchronise the clocks (NTP)"
        )
    return "unready", (
        f"{describe(offset)}, more than the {margin} s skew margin "
        "(REALTIME_CLOCK_SKEW_MARGIN_SECONDS): a used ticket could be accepted again; "
        "synchronise the clocks (NTP)"
    )


class SkewWatch:
    """Compares this process's clock with the store's: `check()` logs, `problem()` is for `/readyz`."""

    def __init__(
        self,
        store: ReplayStore,
        *,
        leeway: int,
        margin: int,
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._store = store
        self._leeway = leeway
        self._margin = margin
        self._interval = interval
        self._level = "ok"
        self._task: asyncio.Task[None] | None = None
        self.offset: float | None = None

    async def check(self) -> None:
        """Measure now and log when the verdict changes (a store that does not answer is skipped)."""
        try:
            self.offset = await self._store.clock_offset()
        except UnavailableError:
            return  # `/readyz` reports a store that does not answer
        level, message = judge(self.offset, leeway=self._leeway, margin=self._margin)
        if level != self._level:
            if message is not None:
                logger.warning("clock: %s", message)
            else:
                logger.info("clock: back within %d s of the replay store's", self._leeway)
            self._level = level

    async def problem(self) -> str | None:
        """Measure now; a reason not to be ready, or None (a store that does not answer is None here:
        the write probe reports it)."""
        try:
            offset = await self._store.clock_offset()
        except UnavailableError:
            return None
        self.offset = offset
        level, message = judge(offset, leeway=self._leeway, margin=self._margin)
        return message if level == "unready" else None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._every_interval())

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
