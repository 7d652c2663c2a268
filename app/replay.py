"""The replay store: each ticket id is consumed once, in one process or across a fleet (docs/operations.md).

ReplayStore          the interface the edge uses
MemoryReplayStore    memory://  bounded, refuses when full, rejects tickets older than the process
RedisReplayStore     redis://   in `app.redisreplay`: SET NX PX, short timeouts, fails closed

`app.services` opens the one `REALTIME_REPLAY_URL` names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from cachetools import TLRUCache

from app.exceptions import ReplayStoreFullError, TicketNotRedeemableError, TicketReplayedError

RETRY_AFTER_SECONDS = 1


class ReplayStore(Protocol):
    def admits(self, issued_at: int) -> None:
        """Raise TicketNotRedeemableError when this store cannot know whether the ticket was used."""
        ...

    async def consume(self, jti: str, *, expires_at: int) -> None:
        """Mark `jti` used until `expires_at` + leeway, atomically.

        Raises:
            TicketReplayedError: it was used before.
            ReplayStoreUnavailableError / ReplayStoreFullError: the store cannot answer (fail closed).
        """
        ...

    async def probe(self) -> None:
        """Raise an UnavailableError unless the store accepts a write now (readiness)."""
        ...

    async def clock_offset(self) -> float | None:
        """Seconds the store's clock is ahead of this process's (None: it has no clock of its own).

        Raises:
            ReplayStoreUnavailableError: the store did not answer.
        """
        ...

    async def setup_warnings(self) -> list[str]:
        """What in the store's setup could let a used ticket be used again (logged at start-up)."""
        ...

    async def aclose(self) -> None: ...


class MemoryReplayStore:
    """One process's store: a bounded TTL cache that refuses rather than evict a live entry."""

    def __init__(self, *, maxsize: int, leeway: int, clock: Callable[[], float]) -> None:
        self._leeway = leeway
        # The value is exp + leeway. TLRUCache drops an item once `now >= ttu`, but the verifier still
        # accepts the ticket at `now == exp + leeway`: hold the entry through that instant too.
        self._cache: TLRUCache[str, float] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, until, _now: math.nextafter(until, math.inf), timer=clock
        )
        self.started = math.floor(clock())

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    def admits(self, issued_at: int) -> None:
        if issued_at < self.started:
            raise TicketNotRedeemableError(
                "the ticket was issued before this edge started, and its memory:// replay store "
                "cannot know whether it was used: mint a new ticket (or use a redis:// store)"
            )

    async def consume(self, jti: str, *, expires_at: int) -> None:
        cache = self._cache
        cache.expire()
        if jti in cache:
            raise TicketReplayedError("this ticket was already used: mint a new one for each connection")
        if len(cache) >= cache.maxsize:
            raise ReplayStoreFullError(
                f"the memory replay store holds {cache.maxsize} unexpired tickets; try again shortly "
                "(or raise REALTIME_REPLAY_MEMORY_MAX)",
                retry_after=RETRY_AFTER_SECONDS,
            )
        cache[jti] = float(expires_at + self._leeway)

    async def probe(self) -> None:
        self._cache.expire()
        if len(self._cache) >= self._cache.maxsize:
            raise ReplayStoreFullError(
                f"the memory replay store holds {self._cache.maxsize} unexpired tickets",
                retry_after=RETRY_AFTER_SECONDS,
            )

    async def clock_offset(self) -> float | None:
        return None  # the store is this process: one clock

    async def setup_warnings(self) -> list[str]:
        return []  # forgetting on restart is handled by `admits`

    async def aclose(self) -> None:
        return None
