"""The Redis client of fleet control (revocations, leases, quota), on one Redis or a Redis Cluster.

Every fleet-control key carries one hash tag (`{fleet}`), so on a Redis Cluster they all live on
one shard: a Lua script may touch several of them, and one connection reaches them all. The client
talks to the node `REALTIME_REPLAY_URL` names and, when that node answers MOVED, to the node that
owns the tag from then on. Pub/sub reaches every node of a cluster, so any node serves it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError
from redis.maint_notifications import MaintNotificationsConfig

T = TypeVar("T")
TAG = "{fleet}"


def fleet_key(prefix: str, name: str) -> str:
    """`<prefix>{fleet}<name>`: every fleet-control key, on one Redis Cluster shard."""
    return f"{prefix}{TAG}{name}"


class FleetRedis:
    """One asyncio client with short timeouts and no retries (callers fail closed)."""

    def __init__(self, url: str, *, timeout: float, name: str) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
            # As the replay store's: a pooled connection a Redis restart closed is replaced before
            # use, instead of failing one command (app/edge/redisreplay.py).
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )

    async def run(self, command: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run `command` on the node that owns the fleet's keys (following one MOVED answer)."""
        try:
            return await command(self.client)
        except MovedError as moved:
            # The command did not run (another shard owns the slot): safe to send again there.
            pool = self.client.connection_pool
            options: dict[str, Any] = {**pool.connection_kwargs, "host": moved.host, "port": moved.port}
            old, self.client = (
                self.client,
                aioredis.Redis(
                    connection_pool=aioredis.ConnectionPool(connection_class=pool.connection_class, **options)
                ),
            )
            await old.aclose()
            return await command(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()
