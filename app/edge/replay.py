"""The replay store: each ticket id is consumed once, in one process or across a fleet (docs/operations.md).

ReplayStore          the interface the edge uses
MemoryReplayStore    memory://  bounded, refuses when full, rejects tickets older than the process
RedisReplayStore     redis://   in `app.edge.redisreplay`: SET NX PX, short timeouts, fails closed

`app.edge.services` opens the one `REALTIME_REPLAY_URL` names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from cachetools import TLRUCache

from app.exceptions import ReplayStoreFullError, TicketNotRedeemableError, TicketReplayedError
from app.tickets.keys import MAX_TICKET_SECONDS

RETRY_AFTER_SECONDS = 1
#: Most `jti`s of its own first seconds a memory store remembers (a few MB at most; past it, those
#: tickets are refused as if minted elsewhere).
OWN_MAX = 100_000


class ReplayStore(Protocol):
    def admits(self, issued_at: int, jti: str) -> None:
        """Raise TicketNotRedeemableError when this store cannot know whether the ticket was used."""
        ...

    def minted(self, jti: str, issued_at: int) -> None:
        """This process has just minted the ticket `jti` (so it knows the ticket is new)."""
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
    """One process's store: a bounded TTL cache that refuses rather than evict a live entry.

    A restart empties it, so it refuses every ticket that may have been minted before it started:
    any `iat` up to `floor(start) + leeway`. A minter's clock may run up to the leeway ahead of this
    one (the verifier accepts an `iat` that far in the future), so a ticket minted just before the
    restart can carry an `iat` of up to `start + leeway`. The tickets this process mints itself in
    that window are known by their `jti` and redeem as usual (docs/decisions.md).
    """

    def __init__(self, *, maxsize: int, leeway: int, clock: Callable[[], float]) -> None:
        self._leeway = leeway
        # The value is exp + leeway. TLRUCache drops an item once `now >= ttu`, but the verifier still
        # accepts the ticket at `now == exp + leeway`: hold the entry through that instant too.
        self._cache: TLRUCache[str, float] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, until, _now: math.nextafter(until, math.inf), timer=clock
        )
        self._clock = clock
        self.started = math.floor(clock())
        #: The first `iat` admitted from a ticket this process did not mint.
        self.admits_from = self.started + leeway + 1
        # Tickets minted here with an `iat` below `admits_from`: a few seconds' worth, bounded, and
        # dropped once all of them have expired.
        self._own: set[str] = set()
        self._own_until = float(self.admits_from + MAX_TICKET_SECONDS + leeway)

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    def admits(self, issued_at: int, jti: str) -> None:
        if issued_at < self.admits_from and jti not in self._own:
            raise TicketNotRedeemableError(
                "the ticket may have been issued before this edge started (its memory:// replay "
                "store cannot know whether it was used, and tickets from other minters are refused "
                f"for the first {self.admits_from - self.started} s): mint a new ticket "
                "(or use a redis:// store)"
            )

    def minted(self, jti: str, issued_at: int) -> None:
        own = self._own
        if own and self._clock() > self._own_until:
            own.clear()  # every ticket of the window has expired: the set is never needed again
        if issued_at < self.admits_from and len(own) < OWN_MAX:
            own.add(jti)

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
