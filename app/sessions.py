"""The open sessions of this process: the per-project cap (SPEC section 5) and the drain on shutdown."""

from __future__ import annotations

from collections import Counter

import anyio

from app.exceptions import TooManySessionsError
from app.protocol import Session


class Sessions:
    """The open sessions of this process: counted per project, drained on shutdown."""

    def __init__(self) -> None:
        self._open: set[Session] = set()
        self._held: Counter[str] = Counter()

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
        """Tell every open session `server_shutdown` (close 1012) and wait for them to end."""
        for session in list(self._open):
            await session.terminate(
                "server_shutdown", "the server is shutting down; reconnect with a new ticket"
            )
        with anyio.move_on_after(timeout):
            while self._open:
                await anyio.sleep(0.01)

    async def run(self, session: Session) -> None:
        self._open.add(session)
        try:
            await session.run()
        finally:
            self._open.discard(session)
