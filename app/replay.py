"""The replay store: each ticket id is consumed once, in one process or across a fleet (SPEC section 5).

ReplayStore          the interface the edge uses
MemoryReplayStore    memory://  bounded, refuses when full, rejects tickets older than the process
RedisReplayStore     redis://   SET NX PXAT, short timeouts, fails closed, recovers by itself;
                                a node of a Redis Cluster is detected by its first MOVED answer
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from cachetools import TLRUCache
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from app.config import Settings
from app.exceptions import (
    ReplayStoreFullError,
    ReplayStoreUnavailableError,
    TicketNotRedeemableError,
    TicketReplayedError,
)

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

    async def ping(self) -> None:
        """Raise ReplayStoreUnavailableError when the store cannot answer now."""
        ...

    async def setup_warnings(self) -> list[str]:
        """What in the store's setup could let a used ticket be used again (logged at start-up)."""
        ...

    async def aclose(self) -> None: ...


class MemoryReplayStore:
    """One process's store: a bounded TTL cache that refuses rather than evict a live entry."""

    def __init__(self, *, maxsize: int, leeway: int, clock: Callable[[], float]) -> None:
        self._clock = clock
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

    async def ping(self) -> None:
        return None

    async def setup_warnings(self) -> list[str]:
        return []  # forgetting on restart is handled by `admits`

    async def aclose(self) -> None:
        return None


MAX_CONNECTIONS = 64  # per edge process (per node of a Redis Cluster)
CLIENT_NAME = "realtime-replay"


class RedisReplayStore:
    """A fleet's store: one key per ticket id, `SET NX PXAT`; any error or timeout fails closed."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        leeway: int,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._prefix = prefix
        self._leeway = leeway
        self._timeout = timeout
        self._clock = clock
        self._url = url
        # A burst of handshakes waits (within the timeout) for one of MAX_CONNECTIONS connections
        # instead of opening one each; `CLIENT LIST` names them.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            health_check_interval=0,
            **self._connection_options(),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._cluster: RedisCluster | None = None

    def _connection_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
            "client_name": CLIENT_NAME,
            # redis-py skips its check for pooled connections the server has closed while
            # maintenance notifications are on (the "auto" default): after a Redis restart each
            # stale connection would then fail one consume with 503. Off, a stale connection is
            # replaced before use. Redis Cluster / Enterprise maintenance events are not used here.
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        }

    def _open_cluster(self) -> RedisCluster:
        """The URL names one node of a Redis Cluster: route each key to the shard that owns it."""
        if self._cluster is None:
            self._cluster = RedisCluster.from_url(
                self._url, max_connections=MAX_CONNECTIONS, **self._connection_options()
            )
        return self._cluster

    async def _set(self, key: str, until_ms: int) -> bool:
        if self._cluster is None:
            try:
                return bool(await self._redis.set(key, b"1", nx=True, pxat=until_ms))
            except MovedError:
                pass  # another shard owns the key, so the command did not run: safe to send again
        return bool(await self._open_cluster().set(key, b"1", nx=True, pxat=until_ms))

    def admits(self, issued_at: int) -> None:
        return None  # the store outlives any one edge process

    def _unavailable(self, exc: BaseException) -> ReplayStoreUnavailableError:
        reason = "timed out" if isinstance(exc, TimeoutError | RedisTimeoutError) else type(exc).__name__
        return ReplayStoreUnavailableError(
            # Not "the ticket was not used": a command that timed out may still have been applied.
            f"the replay store did not answer ({reason}); try again shortly, with a new ticket "
            "if this one is then refused as already used",
            retry_after=RETRY_AFTER_SECONDS,
        )

    async def consume(self, jti: str, *, expires_at: int) -> None:
        until_ms = (expires_at + self._leeway) * 1000
        try:
            async with asyncio.timeout(self._timeout):
                stored = await self._set(self._prefix + jti, until_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        if not stored:
            raise TicketReplayedError("this ticket was already used: mint a new one for each connection")

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster is None:
                    await self._redis.ping()
                else:  # every shard: one that is down refuses the tickets it owns
                    await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    async def setup_warnings(self) -> list[str]:
        """Persistence and eviction settings that would let Redis forget a used ticket id.

        Read with `CONFIG GET` once; a Redis that refuses it (managed services may) or does not
        answer yet is not checked (`/readyz` reports one that does not answer).
        """
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.config_get("appendonly", "save", "maxmemory-policy")
        except (RedisError, OSError, TimeoutError):
            return []
        config = {_text(name): _text(value) for name, value in raw.items()}
        warnings: list[str] = []
        if config.get("appendonly") == "no":
            if config.get("save"):
                warnings.append(
                    "Redis persists only snapshots (save, no appendonly): a restart forgets the tickets "
                    "used since the last one, which can then be used again until they expire; run it "
                    "with --appendonly yes --appendfsync always"
                )
            elif "save" in config:
                warnings.append(
                    "Redis keeps nothing on disk (no appendonly, no save): a restart forgets every "
                    "used ticket, which can then be used again until it expires; run it with "
                    "--appendonly yes --appendfsync always"
                )
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            warnings.append(
                f"Redis evicts keys when it is full (maxmemory-policy {policy}): an evicted ticket id "
                "makes its ticket usable again; use noeviction"
            )
        return warnings

    async def aclose(self) -> None:
        await self._redis.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_replay_store(settings: Settings, *, clock: Callable[[], float]) -> ReplayStore:
    """The store `REALTIME_REPLAY_URL` names."""
    if settings.replay_url == "memory://":
        return MemoryReplayStore(
            maxsize=settings.replay_memory_max, leeway=settings.leeway_seconds, clock=clock
        )
    return RedisReplayStore(
        settings.replay_url,
        prefix=settings.replay_prefix,
        leeway=settings.leeway_seconds,
        timeout=settings.replay_timeout_seconds,
        clock=clock,
    )
