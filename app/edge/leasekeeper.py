"""This edge's side of the fleet's session leases: renewed, and the uncapped ones written in batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app.edge.leases import RedisLeases, SessionRecord
from app.exceptions import ReplayStoreUnavailableError

logger = logging.getLogger(__name__)

#: How often an edge writes the leases of sessions opened (without a cap) or ended since it last did.
FLUSH_SECONDS = 0.5
#: At most this many ended sessions wait for their release (Redis down): their leases run out anyway.
MAX_PENDING = 100_000


class LeaseKeeper:
    """This edge's side of the leases: renews them, and writes the uncapped ones in batches.

    Without a cap, a handshake does no Redis work for its lease: the session is written with the
    next batch (within `FLUSH_SECONDS`, so the admin API lists it after up to that long) and its
    lease given back the same way once it ends. With a cap, the handshake takes the lease itself
    (the count must be exact) and gives it back at once when the session ends.
    """

    def __init__(
        self, leases: RedisLeases, records: Callable[[], list[SessionRecord]], *, lease_seconds: float
    ) -> None:
        self._leases = leases
        self._records = records
        self._renew_every = lease_seconds / 3
        self._written: set[str] = set()
        self._ended: list[SessionRecord] = []

    def taken(self, record: SessionRecord) -> None:
        """The handshake took `record`'s lease itself."""
        self._written.add(record.session_id)

    def ended(self, record: SessionRecord) -> None:
        """Give `record`'s lease back with the next batch (again, if the handshake's own release
        raced a renewal that wrote it anew)."""
        self._written.discard(record.session_id)
        if len(self._ended) < MAX_PENDING:
            self._ended.append(record)

    async def run(self) -> None:
        """Write, renew and release until cancelled; a failure is logged once, then retried."""
        failing = False
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            live = self._records()
            renew = loop.time() - renewed >= self._renew_every
            batch = live if renew else [record for record in live if record.session_id not in self._written]
            ended, self._ended = self._ended, []
            try:
                await self._leases.renew(batch)
                await self._leases.release_all(ended)
            except ReplayStoreUnavailableError as exc:
                self._ended = (ended + self._ended)[:MAX_PENDING]
                if not failing:
                    logger.warning("session leases not written: %s", exc.message)
                failing = True
                continue
            if renew:
                renewed = loop.time()
            still = {record.session_id for record in self._records()}  # not those ended meanwhile
            self._written.update(record.session_id for record in batch if record.session_id in still)
            if failing:
                logger.info("session leases written again")
            failing = False
