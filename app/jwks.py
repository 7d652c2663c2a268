"""A verify-only edge's key set: the minter's public JWKS, cached, polled, refreshed on an unknown kid.

The edge keeps serving with the last good set when the minter cannot be reached. Fetches are
rate-limited (one per `min_interval`, however many unknown kids arrive) and each has a timeout.
Because the minter publishes the `next` key before it signs with it (SPEC section 4), an edge that
polls more often than keys rotate never meets an unknown kid during a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from app.exceptions import KeySetError
from app.keys import KeySet

logger = logging.getLogger(__name__)


class JwksKeySource:
    """Keys from `url`; `current()` is the cached set, `refresh()` fetches now (rate-limited)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        min_interval: float,
        clock: Callable[[], float] = time.monotonic,
        poll: bool = True,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._min_interval = min_interval
        self._clock = clock
        self._poll = poll
        self._keys = KeySet.empty()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._poller: asyncio.Task[None] | None = None
        self.failures = 0

    def current(self) -> KeySet:
        return self._keys

    async def start(self) -> None:
        """Fetch once (an unreachable minter is logged; `/readyz` says so until keys arrive) and poll."""
        await self.refresh()
        if self._poll and self._min_interval > 0:
            self._poller = asyncio.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._min_interval)
            await self.refresh()

    async def refresh(self) -> KeySet:
        started = self._clock()
        async with self._lock:
            # Concurrent callers share one fetch; and at most one fetch per `min_interval`.
            if self._fetched_at >= started or self._clock() - self._fetched_at < self._min_interval:
                return self._keys
            self._fetched_at = self._clock()
            try:
                response = await self._client.get(self.url)
                response.raise_for_status()
                self._keys = KeySet.from_jwks(response.json())
            except (httpx.HTTPError, ValueError, KeySetError) as exc:
                self.failures += 1
                logger.warning(
                    "JWKS fetch from %s failed (%s); keeping %d cached keys",
                    self.url,
                    type(exc).__name__,
                    len(self._keys.keys),
                )
        return self._keys

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._client.aclose()
