"""The open sessions of this process: the per-project cap (docs/api.md) and the drain on shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter

from app.driver import SessionDriver
from app.exceptions import TooManySessionsError


class SessionRegistry:
    """The open sessions of this process: counted per project, all drained at once on shutdown."""

    def __init__(self) -> None:
        self._open: set[SessionDriver] = set()
        self._held: Counter[str] = Counter()
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def active(self) -> int:
        return len(self._open)

    def hold(self, project: str, *, cap: int) -> None:
        """Count a session for `project` now, unless it already has `cap` (0: no cap).

        Checking and counting in one step means concurrent handshakes cannot all pass the cap while
        one awaits the replay store.

        Raises:
            TooManySessionsError: the project is at its cap in this process.
        """
        if cap and self._held[project] >= cap:
            raise TooManySessionsError(
                f"project {project!r} has {cap} open sessions, the most allowed; close one first"
            )
        self._held[project] += 1

    def release(self, project: str) -> None:
        self._held[project] -= 1
        if self._held[project] <= 0:
            del self._held[project]

    async def drain(self, *, timeout: float) -> None:
        """Tell every open session `server_shutdown` (close 1012) at once; wait up to `timeout` in all.

        Each session says its last word and closes in its own task, so clients that stop reading
        cost the drain one deadline, not one each.
        """
        for driver in list(self._open):
            driver.shutdown()
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return

    async def run(self, driver: SessionDriver) -> None:
        self._open.add(driver)
        self._empty.clear()
        try:
            await driver.run()
        finally:
            self._open.discard(driver)
            if not self._open:
                self._empty.set()
