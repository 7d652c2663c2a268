"""Small waitable structures for what every open session holds: a message queue and a flag.

`asyncio.Queue` and `asyncio.Event` each allocate `collections.deque` objects up front (three for a
queue, one for an event), about 0.7 KiB apiece, whether anything ever waits or not. An idle session
holds a queue and a flag in its WebSocket protocol for its whole life, so ten thousand sessions held
about 30 MiB in empty deques. These keep a list and create a future only while a task waits
(docs/decisions.md, "Idle session memory").
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until `_wake(waiters)`; a cancelled wait leaves no future behind."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if waiter in waiters:
            waiters.remove(waiter)


class MessageQueue(Generic[T]):
    """An unbounded FIFO with `asyncio.Queue`'s `put_nowait`, `get`, `empty` and `qsize`.

    A `get` cancelled while it waits takes nothing: the item stays for the next one.
    """

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        if self._waiters:
            _wake(self._waiters)

    async def get(self) -> T:
        while not self._items:
            await _wait(self._waiters)
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class Flag:
    """`asyncio.Event`'s `set`, `clear`, `is_set` and `wait`, without a deque of waiters."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiters:
            _wake(self._waiters)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if not self._set:
            await _wait(self._waiters)
        return True
