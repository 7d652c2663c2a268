"""JwksKeySource against a real HTTP server and a real edge process: fetch, refetch, caps, key filter."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import time
import tracemalloc
import zlib
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
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.clock import FakeClock
from app.exceptions import KeySetError
from app.tickets.jwks import JwksKeySource, parse_jwks
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys, rotate
from app.tickets.ticket import issue
from tests.servers import ServiceProcess

INTERVAL = 5.0
REFETCH = 0.2


@dataclass
class Minter:
    """What the tiny server answers: a JWKS document, a failure mode, and a count of requests."""

    body: Any
    mode: str = "ok"  # ok | error | drip | gated | raw
    requests: int = 0
    raw: bytes = b""  # mode raw: sent as is, with `encoding` as its Content-Encoding
    encoding: str = "gzip"
    gate: threading.Event = field(default_factory=threading.Event)
    url: str = ""


def make_app(minter: Minter) -> Starlette:
    async def jwks(request: Request) -> Response:
        minter.requests += 1
        if minter.mode == "raw":
            headers = {"Content-Encoding": minter.encoding, "Content-Type": "application/json"}
            return Response(minter.raw, headers=headers)
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
    refetch_interval: float = REFETCH,
    timeout: float = 2.0,
) -> JwksKeySource:
    return JwksKeySource(
        url,
        timeout=timeout,
        poll_interval=INTERVAL,
        refetch_interval=refetch_interval,
        clock=clock or FakeClock(),
        poll=False,
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


def test_an_unknown_kid_right_after_a_fetch_still_gets_a_new_fetch(
    minter: Minter, keys_dir: Path, keyset: KeySet
) -> None:
    """A rotation just after a poll: the promoted key must not wait for the next poll (5 s)."""

    async def scenario() -> set[str]:
        keys = source(minter.url)
        try:
            await keys.start()
            minter.body = rotate(keys_dir, now=int(time.time())).jwks()
            return kids(await keys.refresh())  # waits out the refetch interval, then fetches
        finally:
            await keys.aclose()

    after = asyncio.run(scenario())
    assert after == kids(KeySet.load(keys_dir)) and len(after) == 3
    assert minter.requests == 2


def test_fetches_on_unknown_kids_wait_out_the_refetch_interval(minter: Minter) -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))  # the fake clock stands still: only the wait is recorded

    async def scenario() -> None:
        keys = JwksKeySource(
            minter.url,
            timeout=2,
            poll_interval=INTERVAL,
            refetch_interval=REFETCH,
            clock=clock,
            sleep=sleep,
            poll=False,
        )
        try:
            await keys.start()
            await keys.refresh()  # at once after the start: waits the whole interval
            clock.advance(0.05)
            await keys.refresh()  # 0.05 s into it: waits the rest
            clock.advance(REFETCH)
            await keys.refresh()  # the interval has passed: no wait
        finally:
            await keys.aclose()

    asyncio.run(scenario())
    assert slept == [REFETCH, round(REFETCH - 0.05, 6)]
    assert minter.requests == 4


def test_concurrent_refreshes_share_fetches(minter: Minter, keyset: KeySet) -> None:
    """Ten callers at once: the first fetches; that fetch may predate the key the other nine need,
    so one more follows, shared by the nine."""

    async def scenario() -> list[KeySet]:
        # A real clock and no rate limit: only the sharing keeps this at two fetches.
        keys = source(minter.url, clock=time.monotonic, refetch_interval=0.0)
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
    assert minter.requests == 2


def test_a_fetch_that_never_ends_is_cut_off_by_the_timeout(minter: Minter, keyset: KeySet) -> None:
    clock = FakeClock()

    async def scenario() -> tuple[KeySet, int]:
        keys = source(minter.url, clock=clock, timeout=2.0)  # the first fetch must fit in it too
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


def spaces_gzipped(megabytes: int) -> bytes:
    """`megabytes` MiB of spaces, gzip-compressed chunk by chunk (about 1 KiB per MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    return b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()


def fetch_once(minter: Minter) -> tuple[KeySet, int]:
    """Start a source (one fetch), then one more fetch after the first succeeded."""

    async def scenario() -> tuple[KeySet, int]:
        keys = source(minter.url)
        try:
            await keys.start()
            minter.mode = "raw"
            await keys.refresh()
            return keys.current(), keys.failures
        finally:
            await keys.aclose()

    return asyncio.run(scenario())


def test_a_gzip_bomb_is_cut_off_at_1_mib_of_decompressed_bytes(
    minter: Minter, keyset: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    """200 MiB of spaces in 200 KiB of gzip: what it inflates to must never be held (only 1 MiB)."""
    minter.raw = spaces_gzipped(200)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="app.tickets.jwks"):
            kept, failures = fetch_once(minter)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kids(kept) == kids(keyset) and failures == 1
    assert "larger than 1048576 bytes" in caplog.text and "keeping 2 cached keys" in caplog.text
    # The decompressed body is capped at 1 MiB + one step; httpx's own decoder inflates a whole
    # network chunk at once (tens of MiB here) before any cap could look at it.
    assert peak < 16 << 20, f"peak traced memory {peak >> 20} MiB"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_a_compressed_jwks_within_the_cap_is_read(minter: Minter, keyset: KeySet, encoding: str) -> None:
    document = json.dumps(keyset.jwks()).encode()
    padded = document[:-1] + b" " * 500_000 + b"}"  # inflates to far more than it weighs
    if encoding == "gzip":
        minter.raw = gzip.compress(padded)
    else:
        minter.raw = zlib.compress(padded) if encoding == "deflate" else padded
    minter.encoding = encoding
    kept, failures = fetch_once(minter)
    assert kids(kept) == kids(keyset) and failures == 0 and minter.requests == 2


def test_an_unknown_content_encoding_is_refused(minter: Minter, keyset: KeySet) -> None:
    minter.raw, minter.encoding = b"\x00\x01", "br"
    kept, failures = fetch_once(minter)
    assert kids(kept) == kids(keyset) and failures == 1


def jwk(keyset: KeySet, **changes: object) -> dict[str, object]:
    entry: dict[str, object] = dict(keyset.jwks()["keys"][1])
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


KEY_CASES: list[tuple[str, dict[str, object], str | None]] = [
    ("as-published", {}, None),
    ("alg-absent", {"alg": None}, None),
    ("use-absent", {"use": None}, None),
    ("alg-and-use-absent", {"alg": None, "use": None}, None),
    ("kty-ec", {"kty": "EC"}, "`kty` is 'EC', not OKP"),
    ("kty-absent", {"kty": None}, "`kty` is 'None', not OKP"),
    ("crv-x25519", {"crv": "X25519"}, "`crv` is 'X25519', not Ed25519"),
    ("alg-rs256", {"alg": "RS256"}, "`alg` is 'RS256', not EdDSA"),
    ("alg-none", {"alg": "none"}, "`alg` is 'none', not EdDSA"),
    ("use-enc", {"use": "enc"}, "`use` is 'enc', not sig"),
    ("kid-absent", {"kid": None}, "needs a string `kid` and `x`"),
    ("kid-number", {"kid": 7}, "needs a string `kid` and `x`"),
    ("x-short", {"x": "AAAA"}, "`x` is not an Ed25519 public key"),
]


@pytest.mark.parametrize(
    ("changes", "skipped"), [case[1:] for case in KEY_CASES], ids=[case[0] for case in KEY_CASES]
)
def test_only_ed25519_signing_keys_are_taken(
    keyset: KeySet, changes: dict[str, object], skipped: str | None
) -> None:
    active = keyset.jwks()["keys"][0]
    keys, reasons = parse_jwks({"keys": [active, jwk(keyset, **changes)]})
    if skipped is None:
        assert kids(keys) == kids(keyset) and reasons == []
    else:
        assert kids(keys) == {active["kid"]}
        assert len(reasons) == 1 and reasons[0].endswith(skipped), reasons


@pytest.mark.parametrize(
    "document",
    [[], {"keys": "x"}, {"nokeys": []}, None],
    ids=["list", "keys-not-list", "no-keys", "null"],
)
def test_a_document_without_a_keys_list_is_an_error(document: object) -> None:
    with pytest.raises(KeySetError, match="`keys` list"):
        parse_jwks(document)


def test_skipped_keys_are_logged_once_not_at_every_poll(
    minter: Minter, keyset: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    minter.body = {"keys": [*keyset.jwks()["keys"], {"kty": "RSA", "kid": "rsa-1", "n": "x", "e": "AQAB"}]}
    clock = FakeClock()

    async def scenario() -> KeySet:
        keys = source(minter.url, clock=clock)
        try:
            await keys.start()
            for _ in range(3):
                clock.advance(INTERVAL)
                await keys.refresh()
            return keys.current()
        finally:
            await keys.aclose()

    with caplog.at_level(logging.WARNING, logger="app.tickets.jwks"):
        kept = asyncio.run(scenario())
    assert kids(kept) == kids(keyset) and minter.requests == 4
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == [f"JWKS from {minter.url}: skipped key 'rsa-1': `kty` is 'RSA', not OKP"]


def peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def signed(keyset: KeySet) -> str:
    signer = keyset.signer
    assert signer is not None
    return issue(
        signer,
        project="p",
        config={},
        locked=(),
        ttl=60,
        now=time.time(),
        issuer="opper-realtime",
        audience="opper-realtime",
        max_bytes=6144,
    ).token


def handshake(edge: ServiceProcess, ticket: str) -> str:
    try:
        with connect(edge.ws_url, subprotocols=[Subprotocol("opper-ticket." + ticket)], open_timeout=10):
            return "upgraded"
    except InvalidStatus as exc:
        code: str = json.loads(exc.response.body or b"{}")["error"]["code"]
        return code


def test_an_edge_process_fed_a_gzip_bomb_keeps_its_memory_and_its_keys(
    minter: Minter, keyset: KeySet, tmp_path: Path
) -> None:
    """A real edge (REALTIME_JWKS_URL): an unknown kid makes it fetch 200 MiB of gzipped spaces."""
    stranger, _ = ensure_keys(tmp_path / "other", now=int(time.time()) - 60)
    env = {
        "REALTIME_JWKS_URL": minter.url,
        "REALTIME_KEYS_DIR": str(tmp_path / "edge-keys"),
        "REALTIME_REPLAY_URL": "memory://",
    }
    with ServiceProcess(env=env, log_path=tmp_path / "edge.log") as edge:
        assert edge.process is not None
        edge.wait_out_start_window()
        assert handshake(edge, signed(keyset)) == "upgraded"
        minter.raw, minter.mode = spaces_gzipped(200), "raw"
        before = peak_rss(edge.process.pid)
        assert handshake(edge, signed(stranger)) == "unknown_key"  # the fetch it made was refused
        grew = peak_rss(edge.process.pid) - before
        assert handshake(edge, signed(keyset)) == "upgraded"  # the cached keys still verify
        # The log writer writes from its own thread: wait for the line rather than read too early.
        deadline = time.monotonic() + 10
        while "keeping 2 cached keys" not in (log := edge.log()) and time.monotonic() < deadline:
            time.sleep(0.02)
    print(f"\ngzip bomb: the edge's peak memory grew by {grew / (1 << 20):.1f} MiB")
    assert "larger than 1048576 bytes" in log and "keeping 2 cached keys" in log
    assert "Traceback" not in log
    # 200 MiB were on offer; the edge holds at most 1 MiB of it (plus one zlib step).
    assert grew < 32 << 20, f"peak memory grew by {grew >> 20} MiB"


def test_each_fetch_has_a_connection_of_its_own(keyset: KeySet) -> None:
    """A minter closes an idle kept-alive connection after its keep-alive timeout (uvicorn's 5 s is
    the edges' poll interval): a fetch sent on it as it closed failed, and an unknown kid then refused
    a valid ticket. This server answers one request per connection and closes at the next one."""
    body = json.dumps(keyset.jwks()).encode()
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        answered = False
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if answered:
                    break  # its idle timeout passed as this request came: closed unanswered
                head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                await writer.drain()
                answered = True
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def scenario() -> tuple[KeySet, int, int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        keys = source(f"http://127.0.0.1:{port}/.well-known/jwks.json")
        try:
            await keys.start()
            refreshed = await keys.refresh()  # an unknown kid
            return refreshed, keys.fetches, keys.failures
        finally:
            await keys.aclose()
            server.close()
            await server.wait_closed()

    refreshed, fetches, failures = asyncio.run(scenario())
    assert (fetches, failures) == (2, 0)
    assert kids(refreshed) == kids(keyset)
    assert connections == 2
