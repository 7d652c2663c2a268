"""The open sessions of this process: the per-project cap, revocation of live sessions, the drain."""

from __future__ import annotations

import asyncio
from collections import Counter

from app.edge.leases import SessionRecord
from app.edge.revocations import Revocation, RevocationIndex, Subject, refusal
from app.exceptions import TooManySessionsError
from app.session.driver import SessionDriver


class SessionRegistry:
    """The open sessions of this process: counted per project, all drained at once on shutdown."""

    def __init__(self) -> None:
        self._open: set[SessionDriver] = set()
        self._subjects: dict[SessionDriver, tuple[SessionRecord, Subject]] = {}
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

    def records(self) -> list[SessionRecord]:
        """The open sessions as the admin API lists them (the model once the session has started)."""
        found = []
        for driver, (record, _subject) in self._subjects.items():
            if driver.core.model is not None:
                record.model = driver.core.model.id
            found.append(record)
        return found

    def revoke(self, revocation: Revocation) -> int:
        """End every open session `revocation` covers with `revoked`; returns how many."""
        index = RevocationIndex()
        index.add(revocation)
        message = refusal(revocation).message.replace("the ticket's", "this session's", 1)
        ended = 0
        for driver, (_record, subject) in list(self._subjects.items()):
            if index.matching(subject) is not None:
                driver.revoke(message)
                ended += 1
        return ended

    async def run(
        self, driver: SessionDriver, *, record: SessionRecord | None = None, subject: Subject | None = None
    ) -> None:
        self._open.add(driver)
        if record is not None and subject is not None:
            self._subjects[driver] = (record, subject)
        self._empty.clear()
        try:
            await driver.run()
        finally:
            self._subjects.pop(driver, None)
            self._open.discard(driver)
            if not self._open:
                self._empty.set()
