"""Injected time: the system clock for processes, a fake clock that tests move by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds since the epoch, and a way to wait for a moment on that clock."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


class FakeClock:
    """A clock that only moves when `advance` is called; sleepers wake as their deadline passes."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += seconds
        waiting = []
        for deadline, future in self._sleepers:
            if deadline <= self._now:
                if not future.done():
                    future.get_loop().call_soon_threadsafe(_wake, future)
            else:
                waiting.append((deadline, future))
        self._sleepers = waiting

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((deadline, future))
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks wait on this clock (tests poll this before advancing)."""
        return sum(1 for _, future in self._sleepers if not future.done())


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
