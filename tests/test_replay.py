"""Replay stores: memory:// with a fake clock, redis:// against a private redis-server, and real edges."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import signal
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.clock import FakeClock
from app.edge.redisreplay import CLIENT_NAME, MAX_CONNECTIONS, PROBE_MILLISECONDS, RedisReplayStore
from app.edge.replay import MemoryReplayStore
from app.exceptions import (
    ReplayStoreFullError,
    ReplayStoreUnavailableError,
    TicketNotRedeemableError,
    TicketReplayedError,
)
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.redis_server import RedisServer, redis_server, require_redis_server, start_cluster
from tests.sealing import claims_of
from tests.servers import ServiceProcess

__all__ = ["redis_server"]  # the fixture, imported so pytest finds it

LEEWAY = 5
MARGIN = 30
PREFIX = "realtime:jti:"
PROJECT = "proj_replay"
RACERS = 200


# --- memory:// ------------------------------------------------------------------------------------


def memory_store(clock: FakeClock, maxsize: int = 10) -> MemoryReplayStore:
    return MemoryReplayStore(maxsize=maxsize, leeway=LEEWAY, clock=clock)


def test_memory_consumes_once(clock: FakeClock) -> None:
    store = memory_store(clock)
    expires_at = int(clock()) + 60
    asyncio.run(store.consume("jti-1", expires_at=expires_at))
    with pytest.raises(TicketReplayedError) as caught:
        asyncio.run(store.consume("jti-1", expires_at=expires_at))
    assert (caught.value.code, caught.value.status) == ("ticket_replayed", 401)
    asyncio.run(store.consume("jti-2", expires_at=expires_at))
    assert len(store) == 2


def test_memory_entries_live_until_exp_plus_leeway_then_free(clock: FakeClock) -> None:
    store = memory_store(clock)
    expires_at = int(clock()) + 60
    asyncio.run(store.consume("jti-1", expires_at=expires_at))
    clock.advance(expires_at + LEEWAY - clock())
    # now == exp + leeway: the verifier still accepts the ticket (it rejects `now > exp + leeway`),
    # so the store must still hold it.
    assert clock() == expires_at + LEEWAY
    with pytest.raises(TicketReplayedError):
        asyncio.run(store.consume("jti-1", expires_at=expires_at))
    assert len(store) == 1
    clock.advance(0.001)  # just past exp + leeway: the entry is gone and its memory freed
    assert len(store) == 0
    # Accepted again; in practice the verifier refuses the ticket as expired long before this point.
    asyncio.run(store.consume("jti-1", expires_at=expires_at))


def test_memory_full_of_live_entries_refuses_and_never_evicts(clock: FakeClock) -> None:
    store = memory_store(clock, maxsize=2)
    now = int(clock())
    asyncio.run(store.consume("short", expires_at=now + 10))
    asyncio.run(store.consume("long", expires_at=now + 100))
    with pytest.raises(ReplayStoreFullError) as caught:
        asyncio.run(store.consume("new", expires_at=now + 60))
    error = caught.value
    assert (error.code, error.status) == ("replay_store_full", 503)
    assert error.retry_after is not None and error.retry_after >= 1
    # A held ticket is still recognised as used, not answered with "full".
    for held in ("short", "long"):
        with pytest.raises(TicketReplayedError):
            asyncio.run(store.consume(held, expires_at=now + 100))
    assert len(store) == 2
    clock.advance(10 + LEEWAY)
    with pytest.raises(ReplayStoreFullError):  # "short" is held through exp + leeway itself
        asyncio.run(store.consume("new", expires_at=now + 60))
    clock.advance(0.001)  # then it expires and frees its slot; "long" stays
    asyncio.run(store.consume("new", expires_at=now + 60))
    with pytest.raises(TicketReplayedError):
        asyncio.run(store.consume("long", expires_at=now + 100))
    assert len(store) == 2


def test_memory_admits_only_tickets_issued_after_start_plus_leeway_or_minted_here() -> None:
    """A minter whose clock runs up to the leeway ahead stamps a pre-restart ticket up to
    `start + leeway`: every `iat` up to `floor(start) + leeway` is refused, unless minted here."""
    clock = FakeClock(1_800_000_000.75)
    store = memory_store(clock)
    assert store.started == 1_800_000_000
    assert store.admits_from == 1_800_000_000 + LEEWAY + 1
    for iat in (1_799_999_999, 1_800_000_000, 1_800_000_000 + LEEWAY):
        with pytest.raises(TicketNotRedeemableError) as caught:
            store.admits(iat, "someone-elses")
        assert (caught.value.code, caught.value.status) == ("ticket_not_redeemable", 401)
        assert "started" in caught.value.message
    store.admits(1_800_000_000 + LEEWAY + 1, "someone-elses")
    store.minted("mine", 1_800_000_000)  # this process minted it after it started
    store.admits(1_800_000_000, "mine")
    with pytest.raises(TicketNotRedeemableError):
        store.admits(1_800_000_000, "not-mine")


def test_memory_forgets_its_own_window_once_every_ticket_of_it_expired() -> None:
    clock = FakeClock(1_800_000_000.0)
    store = memory_store(clock)
    store.minted("mine", 1_800_000_001)
    clock.advance(LEEWAY + 1 + 300 + LEEWAY + 1)
    store.minted("later", int(clock.now()))  # past the window: not kept, and the old set dropped
    with pytest.raises(TicketNotRedeemableError):
        store.admits(1_800_000_001, "mine")


def test_memory_race_in_one_loop_admits_exactly_one(clock: FakeClock) -> None:
    store = memory_store(clock, maxsize=RACERS)

    async def race() -> Counter[str]:
        results = await asyncio.gather(
            *(store.consume("jti", expires_at=int(clock()) + 60) for _ in range(RACERS)),
            return_exceptions=True,
        )
        return Counter("ok" if r is None else getattr(r, "code", repr(r)) for r in results)

    assert asyncio.run(race()) == {"ok": 1, "ticket_replayed": RACERS - 1}


# --- redis:// against a private redis-server ------------------------------------------------------


def redis_store(server: RedisServer, timeout: float = 5.0) -> RedisReplayStore:
    """A store on `server`. The timeout is long enough for a burst of answered commands on a busy
    machine; a stopped server refuses at once, and only a test of a silent one passes a short one."""
    return RedisReplayStore(
        server.url, prefix=PREFIX, leeway=LEEWAY, timeout=timeout, clock=time.time, skew_margin=MARGIN
    )


def assert_kept_for_lifetime(client: Any, key: str, expires_at: int, *, stored_at: float) -> None:
    """Redis expires `key` after the remaining lifetime + leeway + margin, counted by its own clock."""
    expected = (expires_at - stored_at + LEEWAY + MARGIN) * 1000
    pttl = client.pttl(key)
    assert expected - 5000 < pttl <= expected + 1000, (pttl, expected)


async def guarded(awaitable: Any) -> Any:
    """Await with a generous bound so a hang fails the test instead of stalling the run."""
    async with asyncio.timeout(20):
        return await awaitable


@pytest.mark.redis
def test_redis_consumes_once_for_the_lifetime_plus_leeway_and_margin(redis_server: RedisServer) -> None:
    expires_at = int(time.time()) + 60
    stored_at = time.time()

    async def scenario() -> None:
        store = redis_store(redis_server)
        try:
            await store.consume("jti-1", expires_at=expires_at)
            with pytest.raises(TicketReplayedError) as caught:
                await store.consume("jti-1", expires_at=expires_at)
            assert caught.value.code == "ticket_replayed"
            await store.probe()
        finally:
            await store.aclose()

    asyncio.run(scenario())
    with redis_server.client() as client:
        assert client.get(PREFIX + "jti-1") == b"1"
        assert_kept_for_lifetime(client, PREFIX + "jti-1", expires_at, stored_at=stored_at)
        assert client.keys(PREFIX + "jti-*") == [(PREFIX + "jti-1").encode()]
        # The readiness probe wrote one short-lived key of its own under the prefix.
        (probe,) = client.keys(PREFIX + "probe:*")
        assert 0 < client.pttl(probe) <= PROBE_MILLISECONDS


@pytest.mark.redis
def test_redis_connections_are_capped_and_named(redis_server: RedisServer) -> None:
    """A burst of concurrent redemptions shares at most MAX_CONNECTIONS connections, and all succeed."""
    expires_at = int(time.time()) + 60
    burst = MAX_CONNECTIONS * 3

    async def scenario() -> int:
        store = redis_store(redis_server)
        try:
            await guarded(
                asyncio.gather(*(store.consume(f"burst-{n}", expires_at=expires_at) for n in range(burst)))
            )
            with redis_server.client() as client:
                return sum(1 for entry in client.client_list() if entry.get("name") == CLIENT_NAME)
        finally:
            await store.aclose()

    connections = asyncio.run(scenario())
    assert 1 <= connections <= MAX_CONNECTIONS
    with redis_server.client() as client:
        assert client.dbsize() == burst


@pytest.mark.redis
def test_redis_down_fails_closed_and_recovers_on_the_same_store(redis_server: RedisServer) -> None:
    expires_at = int(time.time()) + 60

    async def scenario() -> None:
        store = redis_store(redis_server)
        try:
            await store.consume("before", expires_at=expires_at)
            redis_server.stop()
            for jti in ("down-1", "down-2"):  # a refused connection answers at once, every time
                with pytest.raises(ReplayStoreUnavailableError) as caught:
                    await guarded(store.consume(jti, expires_at=expires_at))
                error = caught.value
                assert (error.code, error.status, error.retry_after) == ("replay_store_unavailable", 503, 1)
            with pytest.raises(ReplayStoreUnavailableError):
                await guarded(store.probe())
            redis_server.start()
            await store.probe()
            # The refused ticket was not used; the same store object reconnects by itself.
            await store.consume("down-1", expires_at=expires_at)
            with pytest.raises(TicketReplayedError):
                await store.consume("down-1", expires_at=expires_at)
        finally:
            await store.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_redis_restart_while_idle_needs_no_failed_request(redis_server: RedisServer) -> None:
    """A pooled connection the server closed while nobody used it is replaced, not reported."""
    expires_at = int(time.time()) + 60

    async def scenario() -> None:
        store = redis_store(redis_server)
        try:
            await store.consume("before", expires_at=expires_at)
            # In a thread, so the event loop runs meanwhile, as it does in a live edge.
            await asyncio.to_thread(redis_server.stop)
            await asyncio.to_thread(redis_server.start)
            await store.consume("after", expires_at=expires_at)
        finally:
            await store.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_redis_restart_without_persistence_forgets_used_tickets(redis_server: RedisServer) -> None:
    """Not a code property but an operating one: this server runs with --save '' --appendonly no."""
    expires_at = int(time.time()) + 60

    async def scenario() -> None:
        store = redis_store(redis_server)
        try:
            await store.consume("used", expires_at=expires_at)
            await asyncio.to_thread(redis_server.stop)
            await asyncio.to_thread(redis_server.start)
            await store.consume("used", expires_at=expires_at)  # accepted again: see docs/operations.md
        finally:
            await store.aclose()

    asyncio.run(scenario())


SETUPS = [
    ("no-persistence", (), ["keeps nothing on disk"]),
    ("append-only", ("--appendonly", "yes"), []),
    ("snapshots-only", ("--save", "3600 1"), ["only snapshots"]),
    (
        "evicting",
        ("--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"),
        ["maxmemory-policy allkeys-lru"],
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in SETUPS], ids=[c[0] for c in SETUPS])
def test_redis_setup_that_can_forget_a_used_ticket_is_reported(
    tmp_path: Path, args: tuple[str, ...], expected: list[str]
) -> None:
    require_redis_server()

    async def scenario(server: RedisServer) -> list[str]:
        store = redis_store(server)
        try:
            return list(await guarded(store.setup_warnings()))
        finally:
            await store.aclose()

    with RedisServer(log_path=tmp_path / "redis.log", extra_args=args) as server:
        warnings = asyncio.run(scenario(server))
    assert len(warnings) == len(expected), warnings
    for warning, words in zip(warnings, expected, strict=True):
        assert words in warning


@pytest.mark.redis
def test_redis_setup_is_not_checked_when_redis_does_not_answer(redis_server: RedisServer) -> None:
    async def scenario() -> list[str]:
        store = redis_store(redis_server, timeout=0.2)
        try:
            await asyncio.to_thread(redis_server.stop)
            return list(await guarded(store.setup_warnings()))
        finally:
            await store.aclose()
            await asyncio.to_thread(redis_server.start)

    assert asyncio.run(scenario()) == []


def test_memory_store_has_no_setup_warnings(clock: FakeClock) -> None:
    assert asyncio.run(memory_store(clock).setup_warnings()) == []


@pytest.mark.redis
def test_redis_that_hangs_times_out_and_fails_closed(redis_server: RedisServer) -> None:
    expires_at = int(time.time()) + 60
    process = redis_server.process
    assert process is not None

    async def scenario() -> None:
        # Long enough for every answered command on a busy machine; the stopped server waits it out.
        store = redis_store(redis_server, timeout=2.0)
        try:
            await store.consume("before", expires_at=expires_at)
            process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(ReplayStoreUnavailableError) as caught:
                    await guarded(store.consume("during", expires_at=expires_at))
                assert "timed out" in caught.value.message
                with pytest.raises(ReplayStoreUnavailableError):
                    await guarded(store.probe())
            finally:
                process.send_signal(signal.SIGCONT)
            # Answers are not mixed up after the abandoned command: each call gets its own reply.
            with pytest.raises(TicketReplayedError):
                await store.consume("before", expires_at=expires_at)
            await store.consume("after", expires_at=expires_at)
            with pytest.raises(TicketReplayedError):
                await store.consume("after", expires_at=expires_at)
        finally:
            await store.aclose()

    asyncio.run(scenario())


# --- real service processes -----------------------------------------------------------------------


def mint(edge: ServiceProcess, api_key: str) -> str:
    response = httpx.post(
        edge.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    ticket: str = response.json()["client_secret"]
    return ticket


@dataclass
class Fleet:
    """Two edges on one keys dir and one private Redis."""

    redis: RedisServer
    a: ServiceProcess
    b: ServiceProcess
    api_key: str

    def mint(self, edge: ServiceProcess) -> str:
        return mint(edge, self.api_key)


def claims(ticket: str, edge: ServiceProcess) -> dict[str, Any]:
    return claims_of(ticket, Path(edge.env["REALTIME_KEYS_DIR"]))


def protocols(ticket: str) -> list[Subprotocol]:
    return [Subprotocol("opper-ticket." + ticket)]


def redeem(edge: ServiceProcess, ticket: str) -> None:
    """Open and close a session with the ticket; raises InvalidStatus when refused."""
    with connect(edge.ws_url, subprotocols=protocols(ticket), open_timeout=10) as ws:
        assert ws.subprotocol == "opper-ticket." + ticket


def refusal(edge: ServiceProcess, ticket: str) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(InvalidStatus) as caught:
        redeem(edge, ticket)
    response = caught.value.response
    body = json.loads(response.body or b"{}")
    return response.status_code, body["error"]["code"], {k.lower(): v for k, v in response.headers.items()}


def readyz(edge: ServiceProcess) -> int:
    return httpx.get(edge.url + "/readyz", timeout=10).status_code


def store_errors(edge: ServiceProcess) -> float:
    for line in httpx.get(edge.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("realtime_replay_store_errors_total "):
            return float(line.split()[1])
    raise AssertionError("realtime_replay_store_errors_total is missing from /metrics")


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One keys directory and one runtime API key, shared by every edge of this module."""
    keys_dir = tmp_path_factory.mktemp("keyring") / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    return keys_dir, api_key


def assert_clean_log(edge: ServiceProcess) -> None:
    log = edge.log()
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, keyring: tuple[Path, str]) -> Iterator[Fleet]:
    require_redis_server()
    tmp = tmp_path_factory.mktemp("fleet")
    keys_dir, api_key = keyring
    with RedisServer(log_path=tmp / "redis.log") as redis_srv:
        shared = {
            "REALTIME_KEYS_DIR": str(keys_dir),
            "REALTIME_REPLAY_URL": redis_srv.url,
            # Generous: a burst of 200 handshakes opens 200 Redis connections per edge, which can take
            # over the default 0.5 s on a loaded machine (a refused connection still fails at once).
            "REALTIME_REPLAY_TIMEOUT_SECONDS": "5",
        }
        with (
            ServiceProcess(env={**shared, "REALTIME_EDGE_NAME": "a"}, log_path=tmp / "a.log") as a,
            ServiceProcess(env={**shared, "REALTIME_EDGE_NAME": "b"}, log_path=tmp / "b.log") as b,
        ):
            yield Fleet(redis_srv, a, b, api_key)
            assert_clean_log(a)
            assert_clean_log(b)


@pytest.fixture(scope="module")
def memory_edge(
    tmp_path_factory: pytest.TempPathFactory, keyring: tuple[Path, str]
) -> Iterator[ServiceProcess]:
    """One edge with the default memory:// store (needs no Redis)."""
    log_path = tmp_path_factory.mktemp("memory") / "memory.log"
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keyring[0])}, log_path=log_path) as edge:
        yield edge
        assert_clean_log(edge)


@pytest.mark.redis
def test_ticket_used_on_one_edge_is_replayed_on_the_other(fleet: Fleet) -> None:
    ticket = fleet.mint(fleet.a)
    redeem(fleet.a, ticket)
    assert refusal(fleet.b, ticket)[:2] == (401, "ticket_replayed")
    assert refusal(fleet.a, ticket)[:2] == (401, "ticket_replayed")
    # The key the edge wrote lives exactly until exp + leeway.
    jti, exp = claims(ticket, fleet.a)["jti"], claims(ticket, fleet.a)["exp"]
    with fleet.redis.client() as client:
        assert_kept_for_lifetime(client, PREFIX + jti, exp, stored_at=time.time())
    # And the other way round.
    ticket = fleet.mint(fleet.b)
    redeem(fleet.b, ticket)
    assert refusal(fleet.a, ticket)[:2] == (401, "ticket_replayed")


async def race(urls: list[str], ticket: str) -> Counter[str]:
    """Open all handshakes at once; count upgrades and refusal codes."""

    async def one(url: str) -> str:
        try:
            async with aconnect(url, subprotocols=protocols(ticket), open_timeout=30) as ws:
                assert ws.subprotocol == "opper-ticket." + ticket
                return "upgraded"
        except InvalidStatus as exc:
            body = json.loads(exc.response.body or b"{}")
            return f"{exc.response.status_code} {body['error']['code']}"

    async with asyncio.timeout(60):
        return Counter(await asyncio.gather(*(one(url) for url in urls)))


@pytest.mark.redis
def test_edges_warn_at_start_up_when_redis_keeps_nothing_on_disk(fleet: Fleet) -> None:
    for edge in (fleet.a, fleet.b):
        lines = [line for line in edge.log().splitlines() if "replay store:" in line]
        assert len(lines) == 1 and " WARNING " in lines[0] and "keeps nothing on disk" in lines[0], lines


@pytest.mark.redis
def test_concurrent_redemptions_across_two_edges_upgrade_exactly_once(fleet: Fleet) -> None:
    ticket = fleet.mint(fleet.a)
    urls = [(fleet.a if i % 2 else fleet.b).ws_url for i in range(RACERS)]
    counts = asyncio.run(race(urls, ticket))
    assert counts == {"upgraded": 1, "401 ticket_replayed": RACERS - 1}


def test_concurrent_redemptions_on_one_memory_edge_upgrade_exactly_once(
    memory_edge: ServiceProcess, keyring: tuple[Path, str]
) -> None:
    ticket = mint(memory_edge, keyring[1])
    counts = asyncio.run(race([memory_edge.ws_url] * RACERS, ticket))
    assert counts == {"upgraded": 1, "401 ticket_replayed": RACERS - 1}


@pytest.mark.redis
def test_edges_fail_closed_while_redis_is_down_and_recover_without_restart(fleet: Fleet) -> None:
    assert (readyz(fleet.a), readyz(fleet.b)) == (200, 200)
    errors_before = {edge.url: store_errors(edge) for edge in (fleet.a, fleet.b)}
    refused = {edge.url: fleet.mint(edge) for edge in (fleet.a, fleet.b)}
    fleet.redis.stop()
    try:
        for edge in (fleet.a, fleet.b):
            status, code, headers = refusal(edge, refused[edge.url])
            assert (status, code) == (503, "replay_store_unavailable")
            assert int(headers["retry-after"]) >= 1
            assert readyz(edge) == 503
            assert httpx.get(edge.url + "/healthz", timeout=10).status_code == 200  # alive, not ready
            body = httpx.get(edge.url + "/readyz", timeout=10).json()
            assert body["status"] == "unavailable" and "replay store" in body["reasons"][0]
            assert store_errors(edge) == errors_before[edge.url] + 1
    finally:
        fleet.redis.start()
    for edge in (fleet.a, fleet.b):
        assert readyz(edge) == 200
        redeem(edge, fleet.mint(edge))
        # A ticket refused with 503 was not consumed (the store never saw it): it redeems now, once.
        redeem(edge, refused[edge.url])
        assert refusal(edge, refused[edge.url])[:2] == (401, "ticket_replayed")


@pytest.mark.redis
def test_edges_recover_from_a_redis_restart_they_did_not_see(fleet: Fleet) -> None:
    """Each edge holds pooled connections the restart closed; the next redemption still succeeds."""
    for edge in (fleet.a, fleet.b):
        redeem(edge, fleet.mint(edge))
    fleet.redis.stop()
    fleet.redis.start()
    for edge in (fleet.a, fleet.b):
        redeem(edge, fleet.mint(edge))
        assert readyz(edge) == 200


@pytest.mark.redis
def test_redis_cluster_routes_each_ticket_to_its_shard(tmp_path: Path) -> None:
    """The URL names one node of a two-shard cluster; tickets owned by the other shard still work."""
    require_redis_server()
    nodes = start_cluster(tmp_path)
    try:
        expires_at = int(time.time()) + 60
        jtis = [f"jti-{index}" for index in range(40)]

        async def scenario() -> None:
            store = redis_store(nodes[0])
            try:
                await store.probe()
                for jti in jtis:
                    await store.consume(jti, expires_at=expires_at)
                for jti in jtis:
                    with pytest.raises(TicketReplayedError):
                        await store.consume(jti, expires_at=expires_at)
                await store.probe()
                # A shard that is down fails closed for the tickets it owns.
                await asyncio.to_thread(nodes[1].stop)
                outcomes = Counter[str]()
                for index in range(40):
                    try:
                        await guarded(store.consume(f"down-{index}", expires_at=expires_at))
                        outcomes["ok"] += 1
                    except ReplayStoreUnavailableError:
                        outcomes["unavailable"] += 1
                assert outcomes["unavailable"] > 0, outcomes
                with pytest.raises(ReplayStoreUnavailableError):
                    await guarded(store.probe())
            finally:
                await store.aclose()

        with warnings.catch_warnings():
            # redis-py's cluster client drops the nodes it replaces on a failed node unclosed; the
            # garbage collector closes their sockets. Collect them here, quietly, not in a later test.
            warnings.simplefilter("ignore", ResourceWarning)
            asyncio.run(scenario())
            gc.collect()
        held = []
        for node in nodes[:1]:
            with node.client() as client:
                keys = [key.decode() for key in client.keys(PREFIX + "jti-*")]
                held.extend(keys)
                for key in keys:
                    assert_kept_for_lifetime(client, key, expires_at, stored_at=time.time())
        assert 0 < len(held) < len(jtis)  # both shards hold some of the tickets
    finally:
        for node in nodes:
            node.stop()


def test_missing_redis_server_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.redis_server.shutil.which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_redis_server()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_redis_server()


LIFETIMES = [
    ("fresh", 60.0, (60 + LEEWAY + MARGIN) * 1000),
    ("fraction-left", 0.25, 250 + (LEEWAY + MARGIN) * 1000),
    ("expired-by-this-clock", -8.0, (LEEWAY + MARGIN) * 1000),
    ("long-expired", -3600.0, (LEEWAY + MARGIN) * 1000),
]


@pytest.mark.parametrize(
    ("left", "expected"), [case[1:] for case in LIFETIMES], ids=[case[0] for case in LIFETIMES]
)
def test_redis_keeps_a_used_id_for_its_lifetime_by_this_clock_plus_leeway_and_margin(
    left: float, expected: int
) -> None:
    """A duration (PX), never less than leeway + margin: an id is never sent already expired."""
    clock = FakeClock(1_800_000_000.0)
    store = RedisReplayStore(
        "redis://127.0.0.1:9/0", prefix=PREFIX, leeway=LEEWAY, timeout=0.5, clock=clock, skew_margin=MARGIN
    )
    expires_at = 1_800_000_000 + math.floor(left) if left >= 1 or left < 0 else 1_800_000_001
    if 0 < left < 1:
        clock.advance(1 - left)
    assert store.lifetime_ms(expires_at) == expected
    asyncio.run(store.aclose())


def test_redis_lifetime_is_never_zero_without_leeway_or_margin() -> None:
    store = RedisReplayStore(
        "redis://127.0.0.1:9/0", prefix=PREFIX, leeway=0, timeout=0.5, clock=FakeClock(), skew_margin=0
    )
    assert store.lifetime_ms(0) == 1  # PX 0 is an error in Redis; 1 ms still answers "used" at once
    asyncio.run(store.aclose())


def test_memory_probe_says_full_when_full(clock: FakeClock) -> None:
    store = memory_store(clock, maxsize=1)
    asyncio.run(store.probe())
    asyncio.run(store.consume("only", expires_at=int(clock()) + 60))
    with pytest.raises(ReplayStoreFullError):
        asyncio.run(store.probe())
    assert asyncio.run(store.clock_offset()) is None
