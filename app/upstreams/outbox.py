"""What a connection's reader task has taken from its upstream and the session has not yet taken.

Bounded in items (the reader stops reading while it is full, so a slow client slows the upstream)
and counted in bytes, the item the reader holds while it waits for room included: the session's
memory budget sees every byte, and is asked at once (`notify`) whenever the count grows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(self, items: int) -> None:
        self._queue: asyncio.Queue[tuple[T, int]] = asyncio.Queue(items)
        self._held = 0
        self._notify: Callable[[], None] = lambda: None

    @property
    def held(self) -> int:
        """Bytes queued, and held by a reader waiting for room."""
        return self._held

    def on_growth(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    async def put(self, item: T, size: int) -> None:
        """Queue `item`, counted as `size` bytes from now until it is taken; waits while full."""
        self._held += size
        self._notify()
        try:
            await self._queue.put((item, size))
        except BaseException:
            self._held -= size
            raise

    async def get(self) -> T:
        item, size = await self._queue.get()
        self._held -= size
        return item
