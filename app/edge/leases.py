"""The fleet's live sessions on Redis: one lease per session, the per-project cap counted across edges.

Each session holds a lease in its project's sorted set (`<prefix>{fleet}lease:<project>`, scored by
the time the lease ends on Redis's clock) and a record (`<prefix>{fleet}sess:<id>`, same lifetime)
for the admin API's listing. The edge renews its sessions' leases every third of their length
(`LeaseKeeper`, in app.edge.leasekeeper); an edge that dies stops renewing, and its sessions stop
counting once their leases run out (`REALTIME_SESSION_LEASE_SECONDS`). Taking a lease is one Lua
script: drop the project's expired leases, count, add when under the cap; concurrent handshakes on
any edge cannot all pass.
Redis's own clock (`TIME`) scores the leases, so edges' clocks do not matter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.edge.fleetredis import FleetRedis, fleet_key
from app.edge.replay import RETRY_AFTER_SECONDS
from app.exceptions import ReplayStoreUnavailableError, TooManySessionsError
from app.tickets.claims import rfc3339

logger = logging.getLogger(__name__)

# KEYS: lease set, record, project index. ARGV: cap (0: none), lease ms, session id, record JSON.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
redis.call('SET', KEYS[2], ARGV[4], 'PX', lease)
redis.call('SADD', KEYS[3], ARGV[5])
return 1
"""
# KEYS: lease set, record, project index. ARGV: lease ms, session id, record JSON, project.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease)
redis.call('SET', KEYS[2], ARGV[3], 'PX', lease)
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"""


@dataclass
class SessionRecord:
    """A live session as the admin API lists it."""

    session_id: str
    project: str
    edge: str
    started_at: float
    api_key_id: str | None
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "project": self.project,
            "model": self.model,
            "edge": self.edge,
            "started": rfc3339(self.started_at),
            "api_key_id": self.api_key_id,
        }


def _unavailable(exc: BaseException) -> ReplayStoreUnavailableError:
    return ReplayStoreUnavailableError(
        f"the session store did not answer ({type(exc).__name__}); try again shortly",
        retry_after=RETRY_AFTER_SECONDS,
    )


class RedisLeases:
    """Session leases and records on Redis; every error fails closed (`replay_store_unavailable`)."""

    def __init__(self, url: str, *, prefix: str, lease_seconds: float, timeout: float) -> None:
        self._prefix = prefix
        self._lease_ms = max(1, math.ceil(lease_seconds * 1000))
        self._timeout = timeout
        self._redis = FleetRedis(url, timeout=timeout, name="realtime-leases")
        self._acquire = self._redis.client.register_script(_ACQUIRE)
        self._renew = self._redis.client.register_script(_RENEW)
        self._projects = fleet_key(prefix, "lease-projects")

    def _lease_key(self, project: str) -> str:
        return fleet_key(self._prefix, f"lease:{project}")

    def _record_key(self, session_id: str) -> str:
        return fleet_key(self._prefix, f"sess:{session_id}")

    async def acquire(self, record: SessionRecord, *, cap: int) -> None:
        """Count `record`'s session in its project, unless the project has `cap` live ones (0: no cap).

        Raises:
            TooManySessionsError: the project is at its cap across the fleet.
            ReplayStoreUnavailableError: Redis did not answer.
        """
        keys = [self._lease_key(record.project), self._record_key(record.session_id), self._projects]
        args: list[str | int] = [
            cap,
            self._lease_ms,
            record.session_id,
            json.dumps(record.to_json()),
            record.project,
        ]
        try:
            async with asyncio.timeout(self._timeout):
                taken = await self._redis.run(
                    lambda client: self._acquire(keys=keys, args=args, client=client)
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from None
        if not taken:
            raise TooManySessionsError(
                f"project {record.project!r} has {cap} open sessions across the fleet, the most "
                "allowed; close one first"
            )

    async def release(self, record: SessionRecord) -> None:
        """Give the lease back now (a failure only leaves it to run out)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.run(lambda client: self._release(client, [record]))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.info("session %s: lease left to expire (%s)", record.session_id, type(exc).__name__)

    async def release_all(self, records: list[SessionRecord]) -> None:
        """Give several leases back in one round trip.

        Raises:
            ReplayStoreUnavailableError: Redis did not answer.
        """
        if not records:
            return
        try:
            async with asyncio.timeout(self._timeout * 4):
                await self._redis.run(lambda client: self._release(client, records))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from None

    async def _release(self, client: aioredis.Redis, records: list[SessionRecord]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.zrem(self._lease_key(record.project), record.session_id)
                pipe.delete(self._record_key(record.session_id))
            await pipe.execute()

    async def renew(self, records: Iterable[SessionRecord]) -> None:
        """Extend every given session's lease (one round trip).

        Raises:
            ReplayStoreUnavailableError: Redis did not answer.
        """
        batch = list(records)
        if not batch:
            return
        try:
            async with asyncio.timeout(self._timeout * 4):
                await self._redis.run(lambda client: self._renew_all(client, batch))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from None

    async def _renew_all(self, client: aioredis.Redis, batch: list[SessionRecord]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for record in batch:
                keys = [self._lease_key(record.project), self._record_key(record.session_id), self._projects]
                args: list[str | int] = [
                    self._lease_ms,
                    record.session_id,
                    json.dumps(record.to_json()),
                    record.project,
                ]
                await self._renew(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def sessions(self, project: str | None) -> list[dict[str, Any]]:
        """The live sessions of `project` (None: of every project) across the fleet.

        Raises:
            ReplayStoreUnavailableError: Redis did not answer.
        """
        try:
            async with asyncio.timeout(self._timeout * 4):
                raw = await self._redis.run(lambda client: self._records_of(client, project))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from None
        sessions = []
        for value in raw:
            if value is None:
                continue
            try:
                data = json.loads(value)
            except ValueError:
                continue
            if isinstance(data, dict):
                sessions.append(data)
        return sorted(sessions, key=lambda item: str(item.get("started")))

    async def _records_of(self, client: aioredis.Redis, project: str | None) -> list[Any]:
        # Redis's clock decides which leases are live, as it does when they are taken.
        seconds, micros = await client.time()
        now = seconds * 1000 + micros // 1000
        if project is None:
            projects = sorted(_text(item) for item in await client.smembers(self._projects))
        else:
            projects = [project]
        ids: list[str] = []
        for name in projects:
            live = await client.zrangebyscore(self._lease_key(name), now, "+inf")
            if not live and project is None:
                await client.srem(self._projects, name)
            ids.extend(_text(item) for item in live)
        return list(await client.mget([self._record_key(i) for i in ids])) if ids else []

    async def find(self, session_id: str) -> dict[str, Any] | None:
        """The record of a live session anywhere in the fleet, or None.

        Raises:
            ReplayStoreUnavailableError: Redis did not answer.
        """
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.run(lambda client: client.get(self._record_key(session_id)))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from None
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def aclose(self) -> None:
        await self._redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
