"""Injected time: the system clock for processes, a fake clock that tests move by hand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall-clock seconds since the epoch, and ways to wait for a moment on that clock."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` in the running event loop once `deadline` has passed (no task needed)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, deadline - time.time()), callback)


class FakeClock:
    """A clock that only moves when `advance` is called; sleepers wake as their deadline passes."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._timers: list[_FakeTimer] = []
        # advance() runs in a test's thread while the loop's thread adds sleepers and timers.
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        with self._lock:
            self._now += seconds
            waiting = []
            for deadline, future in self._sleepers:
                if deadline <= self._now:
                    if not future.done():
                        future.get_loop().call_soon_threadsafe(_wake, future)
                else:
                    waiting.append((deadline, future))
            self._sleepers = waiting
            due = [timer for timer in self._timers if timer.deadline <= self._now]
            self._timers = [
                timer for timer in self._timers if timer.deadline > self._now and not timer.cancelled
            ]
        for timer in due:
            if not timer.cancelled:
                timer.loop.call_soon_threadsafe(timer.fire)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if deadline <= self._now:
                future.set_result(None)
            else:
                self._sleepers.append((deadline, future))
        await future

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = _FakeTimer(deadline, callback, asyncio.get_running_loop())
        with self._lock:
            if deadline <= self._now:
                timer.loop.call_soon(timer.fire)
            else:
                self._timers.append(timer)
        return timer

    @property
    def sleepers(self) -> int:
        """How many tasks and timers wait on this clock (tests poll this before advancing)."""
        waiting = sum(1 for _, future in self._sleepers if not future.done())
        return waiting + sum(1 for timer in self._timers if not timer.cancelled)


class _FakeTimer:
    def __init__(
        self, deadline: float, callback: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.deadline = deadline
        self.callback = callback
        self.loop = loop
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
