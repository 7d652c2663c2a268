"""The session's small waitables (app/waiters.py) behave as the asyncio structures they replace."""

from __future__ import annotations

import asyncio
import sys

from app.waiters import Flag, MessageQueue


def test_queue_keeps_order_and_counts() -> None:
    async def scenario() -> list[int]:
        queue: MessageQueue[int] = MessageQueue()
        assert queue.empty() and queue.qsize() == 0
        for item in (1, 2, 3):
            queue.put_nowait(item)
        assert queue.qsize() == 3 and not queue.empty()
        return [await queue.get() for _ in range(3)]

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_queue_wakes_a_waiting_get() -> None:
    async def scenario() -> str:
        queue: MessageQueue[str] = MessageQueue()
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not getter.done()
        queue.put_nowait("frame")
        return await asyncio.wait_for(getter, 1)

    assert asyncio.run(scenario()) == "frame"


def test_a_cancelled_get_takes_nothing() -> None:
    async def scenario() -> tuple[str, bool]:
        queue: MessageQueue[str] = MessageQueue()
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        getter.cancel()
        queue.put_nowait("kept")  # put in the same pass as the cancel: the cancel wins
        await asyncio.gather(getter, return_exceptions=True)
        return await asyncio.wait_for(queue.get(), 1), getter.cancelled()

    assert asyncio.run(scenario()) == ("kept", True)


def test_two_waiting_gets_each_take_one_item() -> None:
    async def scenario() -> list[int]:
        queue: MessageQueue[int] = MessageQueue()
        first = asyncio.create_task(queue.get())
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.put_nowait(1)
        queue.put_nowait(2)
        return sorted(await asyncio.wait_for(asyncio.gather(first, second), 1))

    assert asyncio.run(scenario()) == [1, 2]


def test_flag_waits_until_set_and_not_after_clear() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        flag = Flag()
        waiter = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        blocked = not waiter.done()
        flag.set()
        woke = await asyncio.wait_for(waiter, 1)
        flag.clear()
        again = asyncio.create_task(flag.wait())
        await asyncio.sleep(0.01)
        still_blocked = not again.done()
        again.cancel()
        return blocked and still_blocked, woke, flag.is_set()

    assert asyncio.run(scenario()) == (True, True, False)


def test_an_idle_queue_and_flag_are_smaller_than_asyncios() -> None:
    async def sizes() -> tuple[int, int]:
        ours_queue, ours_flag = MessageQueue[int](), Flag()
        theirs_queue, theirs_flag = asyncio.Queue[int](), asyncio.Event()

        def deep(obj: object) -> int:
            parts = [obj, *getattr(obj, "__dict__", {}).values()]
            parts += [getattr(obj, name) for name in getattr(type(obj), "__slots__", ())]
            return sum(sys.getsizeof(part) for part in parts)

        return deep(ours_queue) + deep(ours_flag), deep(theirs_queue) + deep(theirs_flag)

    ours, theirs = asyncio.run(sizes())
    assert ours * 4 < theirs, (ours, theirs)
