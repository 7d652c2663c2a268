"""The per-project daily audio quota (`REALTIME_PROJECT_AUDIO_MINUTES_PER_DAY`).

A session's relayed audio is added to its project's total for the UTC day when the session ends;
a handshake is refused (`429 quota_exceeded`, `Retry-After` to midnight UTC) once the total has
reached the quota. A session under way is never cut short: the total is checked only when a
session opens, so the last sessions of a day may take a project past its quota.

MemoryQuota  memory://  one process's totals
RedisQuota   redis://   `<prefix>{fleet}audio:<YYYY-MM-DD>:<project>`, INCRBYFLOAT, kept two days
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.edge.fleetredis import FleetRedis, fleet_key
from app.edge.replay import RETRY_AFTER_SECONDS
from app.exceptions import QuotaExceededError, ReplayStoreUnavailableError

logger = logging.getLogger(__name__)

DAY = 86_400


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def seconds_to_midnight(now: float) -> int:
    """Whole seconds until the next UTC midnight (at least 1)."""
    return max(1, math.ceil(DAY - now % DAY))


class Quota(Protocol):
    async def check(self, project: str) -> None:
        """Raise QuotaExceededError when `project` has used its audio for today.

        Raises:
            QuotaExceededError: over the quota (retry after midnight UTC).
            ReplayStoreUnavailableError: the store did not answer (fail closed).
        """
        ...

    async def record_audio(self, project: str, seconds: float) -> None:
        """Add `seconds` of relayed audio to `project`'s total for today (a failure is logged, not raised)."""
        ...

    async def aclose(self) -> None: ...


def _exceeded(project: str, minutes: float, now: float) -> QuotaExceededError:
    return QuotaExceededError(
        f"project {project!r} has relayed its {minutes:g} minutes of audio for today (UTC); "
        "new sessions are allowed again after midnight UTC",
        retry_after=seconds_to_midnight(now),
    )


class MemoryQuota:
    def __init__(self, *, minutes_per_day: float, clock: Callable[[], float]) -> None:
        self.minutes_per_day = minutes_per_day
        self._clock = clock
        self._used: dict[tuple[str, str], float] = {}

    def used(self, project: str) -> float:
        return self._used.get((utc_day(self._clock()), project), 0.0)

    async def check(self, project: str) -> None:
        if self.used(project) >= self.minutes_per_day * 60:
            raise _exceeded(project, self.minutes_per_day, self._clock())

    async def record_audio(self, project: str, seconds: float) -> None:
        if seconds <= 0:
            return
        day = utc_day(self._clock())
        for key in [key for key in self._used if key[0] != day]:
            del self._used[key]  # yesterday's totals: nothing reads them again
        self._used[(day, project)] = self._used.get((day, project), 0.0) + seconds

    async def aclose(self) -> None:
        return None


class RedisQuota:
    def __init__(
        self, url: str, *, prefix: str, minutes_per_day: float, timeout: float, clock: Callable[[], float]
    ) -> None:
        self.minutes_per_day = minutes_per_day
        self._prefix = prefix
        self._timeout = timeout
        self._clock = clock
        self._redis = FleetRedis(url, timeout=timeout, name="realtime-quota")

    def _key(self, project: str, now: float) -> str:
        return fleet_key(self._prefix, f"audio:{utc_day(now)}:{project}")

    async def check(self, project: str) -> None:
        now = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.run(lambda client: client.get(self._key(project, now)))
        except (RedisError, OSError, TimeoutError) as exc:
            raise ReplayStoreUnavailableError(
                f"the quota store did not answer ({type(exc).__name__}); try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None
        try:
            used = float(raw) if raw is not None else 0.0
        except ValueError:
            used = 0.0
        if used >= self.minutes_per_day * 60:
            raise _exceeded(project, self.minutes_per_day, now)

    async def record_audio(self, project: str, seconds: float) -> None:
        if seconds <= 0:
            return
        key = self._key(project, self._clock())
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.run(lambda client: _add(client, key, seconds))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "project %s: %.1f s of audio not counted (%s)", project, seconds, type(exc).__name__
            )

    async def aclose(self) -> None:
        await self._redis.aclose()


async def _add(client: aioredis.Redis, key: str, seconds: float) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.incrbyfloat(key, seconds)
        pipe.expire(key, 2 * DAY)
        await pipe.execute()
