"""The fleet's replay store on Redis (or a Redis Cluster): `SET NX PX`, short timeouts, fails closed.

Redis keeps a used ticket id for a duration it measures by its own clock (`PX`), never until an
absolute time (`PXAT`): an edge whose clock lags would send a deadline Redis already sees as past,
and Redis answers `OK` to that while keeping nothing, so the ticket could be used again and again.
The store also reads Redis's clock (`TIME`, for `app.edge.skew`) and its persistence settings, and a node
of a Redis Cluster is detected by its first MOVED answer.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from app.edge.replay import RETRY_AFTER_SECONDS
from app.exceptions import ReplayStoreUnavailableError, TicketReplayedError

MAX_CONNECTIONS = 64  # per edge process (per node of a Redis Cluster)
CLIENT_NAME = "realtime-replay"


#: How long the readiness probe's key lives; it is rewritten at each probe.
PROBE_MILLISECONDS = 10_000


class RedisReplayStore:
    """A fleet's store: one key per ticket id, `SET NX PX`; any error or timeout fails closed.

    A used id is kept for the ticket's remaining lifetime by this edge's clock, plus the leeway, plus
    `skew_margin`, and never less than leeway + margin: edges whose clocks differ from this one's by
    less than the margin still find the id while they would accept the ticket.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        leeway: int,
        timeout: float,
        clock: Callable[[], float],
        skew_margin: int = 30,
    ) -> None:
        self._prefix = prefix
        self._leeway = leeway
        self._skew_margin = skew_margin
        # Not a ticket id (those are base64url, without ':'), one per process, short-lived.
        self._probe_key = f"{prefix}probe:{secrets.token_hex(8)}"
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

    async def _on_owner(self, command: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run a one-key command on the node that owns the key."""
        if self._cluster is None:
            try:
                return await command(self._redis)
            except MovedError:
                pass  # another shard owns the key, so the command did not run: safe to send again
        return await command(self._open_cluster())

    def lifetime_ms(self, expires_at: int) -> int:
        """How long Redis keeps a used id: remaining lifetime by this clock + leeway + skew margin."""
        remaining = max(0.0, expires_at - self._clock())
        return max(1, math.ceil((remaining + self._leeway + self._skew_margin) * 1000))

    def admits(self, issued_at: int, jti: str) -> None:
        return None  # the store outlives any one edge process

    def minted(self, jti: str, issued_at: int) -> None:
        return None

    def _unavailable(self, exc: BaseException) -> ReplayStoreUnavailableError:
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            what = "did not answer (timed out)"
        elif isinstance(exc, ResponseError):  # read-only replica, out of memory, ...
            what = f"refused the write ({type(exc).__name__})"
        else:
            what = f"did not answer ({type(exc).__name__})"
        return ReplayStoreUnavailableError(
            # Not "the ticket was not used": a command that timed out may still have been applied.
            f"the replay store {what}; try again shortly, with a new ticket "
            "if this one is then refused as already used",
            retry_after=RETRY_AFTER_SECONDS,
        )

    async def consume(self, jti: str, *, expires_at: int) -> None:
        key, ms = self._prefix + jti, self.lifetime_ms(expires_at)
        try:
            async with asyncio.timeout(self._timeout):
                # `OK` means stored: a positive PX always stores; nil means the key exists.
                stored = await self._on_owner(lambda client: client.set(key, b"1", nx=True, px=ms))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        if not stored:
            raise TicketReplayedError("this ticket was already used: mint a new one for each connection")

    async def probe(self) -> None:
        """Write a short-lived key under the prefix: a read-only replica, a full Redis (noeviction)
        or paused writes answer PING but refuse (or hold) this, as they would a redemption."""
        key = self._probe_key
        try:
            async with asyncio.timeout(self._timeout):
                await self._on_owner(lambda client: client.set(key, b"1", px=PROBE_MILLISECONDS))
                if self._cluster is not None:  # every shard: one that is down refuses its tickets
                    await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    async def clock_offset(self) -> float:
        """Redis `TIME` minus this clock at the middle of the round trip."""
        try:
            async with asyncio.timeout(self._timeout):
                before = self._clock()
                seconds, micros = await self._redis.time()
                after = self._clock()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        return seconds + micros / 1_000_000 - (before + after) / 2

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
