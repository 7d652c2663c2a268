"""JwksKeySource against a real HTTP server: fetch, rate limit, cached set, shared fetch, timeout."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.clock import FakeClock
from app.jwks import JwksKeySource
from app.keys import KeySet
from app.rotation import rotate

INTERVAL = 5.0


@dataclass
class Minter:
    """What the tiny server answers: a JWKS document, a failure mode, and a count of requests."""

    body: Any
    mode: str = "ok"  # ok | error | drip | gated
    requests: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    url: str = ""


def make_app(minter: Minter) -> Starlette:
    async def jwks(request: Request) -> Response:
        minter.requests += 1
        if minter.mode == "error":
            return JSONResponse({"error": "down"}, status_code=503)
        if minter.mode == "drip":

            async def drip() -> AsyncIterator[bytes]:
                while True:  # each byte in time for httpx's read timeout, the whole never ends
                    yield b" "
                    await asyncio.sleep(0.05)

            return StreamingResponse(drip(), media_type="application/json")
        if minter.mode == "gated":
            await anyio.to_thread.run_sync(minter.gate.wait, 10)
        return JSONResponse(minter.body)

    return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


@pytest.fixture
def minter(keyset: KeySet) -> Iterator[Minter]:
    state = Minter(body=keyset.jwks())
    config = uvicorn.Config(
        make_app(state), host="127.0.0.1", port=0, log_level="warning", ws="none", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield state
    state.gate.set()
    server.should_exit = True
    thread.join(timeout=10)


def source(
    url: str,
    *,
    clock: Callable[[], float] | None = None,
    min_interval: float = INTERVAL,
    timeout: float = 2.0,
) -> JwksKeySource:
    return JwksKeySource(
        url, timeout=timeout, min_interval=min_interval, clock=clock or FakeClock(), poll=False
    )


def kids(keys: KeySet) -> set[str]:
    return {key.kid for key in keys.keys}


def test_fetches_the_minters_public_keys(minter: Minter, keyset: KeySet) -> None:
    async def scenario() -> KeySet:
        keys = source(minter.url)
        try:
            await keys.start()
            return keys.current()
        finally:
            await keys.aclose()

    fetched = asyncio.run(scenario())
    assert kids(fetched) == kids(keyset) and len(fetched.keys) == 2
    assert fetched.signer is None  # public keys only: an edge cannot mint
    assert minter.requests == 1


def test_refresh_is_rate_limited_and_picks_up_a_rotation(
    minter: Minter, keys_dir: Path, keyset: KeySet
) -> None:
    clock = FakeClock()

    async def scenario() -> list[set[str]]:
        keys = source(minter.url, clock=clock)
        seen = []
        try:
            await keys.start()
            minter.body = rotate(keys_dir, now=int(time.time())).jwks()
            seen.append(kids(await keys.refresh()))  # within min_interval: no fetch
            clock.advance(INTERVAL - 0.1)
            seen.append(kids(await keys.refresh()))
            clock.advance(0.1)
            seen.append(kids(await keys.refresh()))  # min_interval has passed: fetched
            return seen
        finally:
            await keys.aclose()

    before, still, after = asyncio.run(scenario())
    assert before == still == kids(keyset)
    assert after == kids(KeySet.load(keys_dir)) and len(after) == 3
    assert minter.requests == 2


@pytest.mark.parametrize("failure", ["error", "empty", "not-json", "stopped"])
def test_keeps_the_cached_set_when_the_minter_fails(
    minter: Minter, keyset: KeySet, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()

    async def scenario() -> tuple[KeySet, int]:
        keys = source(minter.url, clock=clock)
        try:
            await keys.start()
            if failure == "error":
                minter.mode = "error"
            elif failure == "empty":
                minter.body = {"keys": []}
            elif failure == "not-json":
                minter.body = ["not", "a", "jwks"]
            else:
                keys.url = "http://127.0.0.1:9/.well-known/jwks.json"  # nothing listens on the discard port
            clock.advance(INTERVAL)
            return await keys.refresh(), keys.failures
        finally:
            await keys.aclose()

    with caplog.at_level(logging.WARNING, logger="app.jwks"):
        kept, failures = asyncio.run(scenario())
    assert kids(kept) == kids(keyset)
    assert failures == 1
    assert "keeping 2 cached keys" in caplog.text


def test_concurrent_refreshes_share_one_fetch(minter: Minter, keyset: KeySet) -> None:
    async def scenario() -> list[KeySet]:
        # A real clock and no rate limit: only the sharing keeps this at one fetch.
        keys = source(minter.url, clock=time.monotonic, min_interval=0.0)
        minter.mode = "gated"
        try:
            waiting = [asyncio.create_task(keys.refresh()) for _ in range(10)]
            while minter.requests == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # let every task reach the lock (the gate holds the fetch)
            minter.gate.set()
            return list(await asyncio.gather(*waiting))
        finally:
            await keys.aclose()

    results = asyncio.run(scenario())
    assert all(kids(result) == kids(keyset) for result in results)
    assert minter.requests == 1


def test_a_fetch_that_never_ends_is_cut_off_by_the_timeout(minter: Minter, keyset: KeySet) -> None:
    clock = FakeClock()

    async def scenario() -> tuple[KeySet, int]:
        keys = source(minter.url, clock=clock, timeout=0.3)
        try:
            await keys.start()
            minter.mode = "drip"
            clock.advance(INTERVAL)
            # The bound here is only a guard; without a total timeout the drip never ends.
            return await asyncio.wait_for(keys.refresh(), timeout=30), keys.failures
        finally:
            await keys.aclose()

    kept, failures = asyncio.run(scenario())
    assert kids(kept) == kids(keyset)
    assert failures == 1
