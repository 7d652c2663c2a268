"""A verify-only edge's key set: the minter's public JWKS, cached, polled, refreshed on an unknown kid.

The edge keeps serving with the last good set when the minter cannot be reached. Fetches are
rate-limited (one per `min_interval`, however many unknown kids arrive) and each has a timeout.
Because the minter publishes the `next` key before it signs with it (SPEC section 4), an edge that
polls more often than keys rotate never meets an unknown kid during a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

import httpx

from app.exceptions import KeySetError
from app.keys import KeySet

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20


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
        self._generation = 0
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
            self._poller.add_done_callback(self._poller_ended)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._min_interval)
            await self.refresh()  # fetch failures are handled there: the cached set is kept

    def _poller_ended(self, task: asyncio.Task[None]) -> None:
        """Only a bug ends the poller early: say so loudly, since keys then change only on unknown kids."""
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "JWKS poller of %s stopped; keys refresh only on unknown kids now",
                self.url,
                exc_info=task.exception(),
            )

    async def refresh(self) -> KeySet:
        """Fetch the set now unless one was fetched less than `min_interval` ago.

        Callers that arrive while a fetch is in flight wait for it and share its result.
        """
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return self._keys  # fetched while this caller waited for the lock
            if self._clock() - self._fetched_at < self._min_interval:
                return self._keys
            self._fetched_at = self._clock()
            try:
                # httpx's timeout bounds each read, not the whole fetch: a server that drips
                # bytes would hold every verifier waiting on this lock; bound the total too.
                async with asyncio.timeout(self._timeout):
                    keys = KeySet.from_jwks(await self._fetch())
                if not keys.keys:
                    raise KeySetError("JWKS: the document holds no Ed25519 keys")
                self._keys = keys
            except (httpx.HTTPError, TimeoutError, ValueError, KeySetError) as exc:
                self.failures += 1
                logger.warning(
                    "JWKS fetch from %s failed (%s); keeping %d cached keys",
                    self.url,
                    type(exc).__name__,
                    len(self._keys.keys),
                )
            finally:
                self._generation += 1
        return self._keys

    async def _fetch(self) -> object:
        async with self._client.stream("GET", self.url) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS document larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._client.aclose()
