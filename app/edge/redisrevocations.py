"""redis://: the fleet's revocations in a Redis hash plus pub/sub, and `record` for the commands."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.config import Settings
from app.edge.fleetredis import FleetRedis, fleet_key
from app.edge.replay import RETRY_AFTER_SECONDS
from app.edge.revocations import MemoryRevocations, Revocation, Subject
from app.exceptions import ReplayStoreUnavailableError

logger = logging.getLogger(__name__)

#: How often an edge on Redis rereads every revocation, besides pub/sub (a message lost in a
#: reconnection is found then; a Redis that stopped answering is noticed then).
RESYNC_SECONDS = 2.0


class RedisRevocations(MemoryRevocations):
    """redis://: a hash of revocations (`<prefix>revocations`) and a channel announcing each new one.

    The edge subscribes first, then reads the hash, so nothing added in between is missed; it
    rereads the hash every `RESYNC_SECONDS` and after every reconnection. Until it follows the store
    again, each handshake reads the hash itself (`refresh`), and refuses with
    `replay_store_unavailable` when Redis does not answer: a revoked ticket must not pass because
    this edge could not hear of it (as single use fails closed).
    """

    def __init__(self, url: str, *, prefix: str, timeout: float, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self._url = url
        self._timeout = timeout
        self.hash_key = fleet_key(prefix, "revocations")
        self.channel = fleet_key(prefix, "revocations:new")
        self._redis = FleetRedis(url, timeout=timeout, name="realtime-revocations")
        self._in_sync = False
        self._task: asyncio.Task[None] | None = None

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def check(self, subject: Subject) -> bool:
        super().check(subject)
        return self._in_sync

    async def refresh(self) -> None:
        """Read the hash now: the handshake's own look while this edge is not following the store
        (starting, or reconnecting after a Redis restart), so one that answers refuses nothing."""
        revocations = await self._read()
        self._index.expire(self._clock())
        for revocation in revocations:
            self._apply(revocation)

    async def add(self, revocation: Revocation) -> None:
        """Store it in the hash (durable), announce it, and apply it here at once.

        Raises:
            ReplayStoreUnavailableError: Redis did not take it.
        """
        now = self._clock()
        await self._redis.run(
            lambda client: write(
                client, self.hash_key, self.channel, revocation, timeout=self._timeout, now=now
            )
        )
        self._apply(revocation)

    async def entries(self) -> list[Revocation]:
        self._index.replace(await self._read())
        return await super().entries()

    async def _read(self) -> list[Revocation]:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.run(lambda client: client.hgetall(self.hash_key))
        except (RedisError, OSError, TimeoutError) as exc:
            raise ReplayStoreUnavailableError(
                f"the store did not answer ({type(exc).__name__})", retry_after=RETRY_AFTER_SECONDS
            ) from None
        now = self._clock()
        found = []
        for value in raw.values():
            try:
                revocation = Revocation.from_json(json.loads(value))
            except ValueError:
                revocation = None
            if revocation is not None and revocation.expires_at > now:
                found.append(revocation)
        return found

    async def start(self) -> None:
        """Read the revocations once now (so a healthy edge is in sync at once) and keep following."""
        try:
            self._sync(await self._read())
        except ReplayStoreUnavailableError as exc:
            logger.warning("revocations: %s; handshakes are refused until it answers", exc.message)
        self._task = asyncio.create_task(self._follow(), name="revocations")

    def _sync(self, revocations: list[Revocation]) -> None:
        self._index.expire(self._clock())
        for revocation in revocations:
            self._apply(revocation)
        if not self._in_sync:
            logger.info("revocations: in sync with the store (%d in force)", len(self._index))
        self._in_sync = True

    async def _follow(self) -> None:
        """Subscribe, read the hash, then apply each announcement; on any failure, start again.

        However this task ends, the edge stops trusting what it holds (each handshake reads the
        hash itself from then on): never a stale set taken for a current one.
        """
        try:
            await self._follow_forever()
        finally:
            self._in_sync = False

    async def _follow_forever(self) -> None:
        while True:
            pubsub = self._redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self.channel)
                self._sync(await self._read())
                resync = asyncio.get_running_loop().time() + RESYNC_SECONDS
                while True:
                    message = await pubsub.get_message(timeout=RESYNC_SECONDS / 4)
                    if message is not None and message.get("type") == "message":
                        try:
                            revocation = Revocation.from_json(json.loads(message["data"]))
                        except ValueError:
                            revocation = None
                        if revocation is not None:
                            self._apply(revocation)
                    if asyncio.get_running_loop().time() >= resync:
                        self._sync(await self._read())
                        resync = asyncio.get_running_loop().time() + RESYNC_SECONDS
            except (RedisError, OSError, TimeoutError, ReplayStoreUnavailableError) as exc:
                if self._in_sync:
                    logger.warning(
                        "revocations: lost the store (%s); handshakes are refused until it answers",
                        type(exc).__name__,
                    )
                self._in_sync = False
            finally:
                try:
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()
                except (RedisError, OSError, TimeoutError):
                    pass  # the connection is gone with the store; nothing to release
            await asyncio.sleep(RESYNC_SECONDS / 8)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._redis.aclose()


async def write(
    client: aioredis.Redis, hash_key: str, channel: str, revocation: Revocation, *, timeout: float, now: float
) -> None:
    """Store `revocation` in the hash (dropping expired entries), keep the hash as long as its newest
    entry, and announce it on the channel.

    Raises:
        ReplayStoreUnavailableError: Redis did not answer or refused.
    """
    body = json.dumps(revocation.to_json(), separators=(",", ":"))
    try:
        async with asyncio.timeout(timeout):
            stored = await client.hgetall(hash_key)
            stale, last = [], revocation.expires_at
            for field, value in stored.items():
                try:
                    known = Revocation.from_json(json.loads(value))
                except ValueError:
                    known = None
                if known is None or known.expires_at <= now:
                    stale.append(field)
                else:
                    last = max(last, known.expires_at)
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(hash_key, revocation.key, body)
                if stale:
                    pipe.hdel(hash_key, *stale)
                # The hash lives as long as its longest-lived entry; the others are dropped as they
                # expire, by whoever writes next (and ignored by readers meanwhile).
                pipe.pexpire(hash_key, max(1, math.ceil((last - now) * 1000)))
                pipe.publish(channel, body)
                await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        raise ReplayStoreUnavailableError(
            f"the store did not take the revocation ({type(exc).__name__}); try again",
            retry_after=RETRY_AFTER_SECONDS,
        ) from None


def record(settings: Settings, revocation: Revocation) -> bool:
    """Store `revocation` where the fleet reads it (`make revoke`, `make revoke-api-key`).

    Returns False on memory:// (revocations then live in the serving process: use the admin API).

    Raises:
        ReplayStoreUnavailableError: Redis did not take it.
    """
    if settings.replay_url == "memory://":
        return False

    async def send() -> None:
        client = FleetRedis(settings.replay_url, timeout=5, name="realtime-revoke")
        try:
            prefix = settings.replay_prefix
            await client.run(
                lambda redis: write(
                    redis,
                    fleet_key(prefix, "revocations"),
                    fleet_key(prefix, "revocations:new"),
                    revocation,
                    timeout=5,
                    now=time.time(),
                )
            )
        finally:
            await client.aclose()

    asyncio.run(send())
    return True
