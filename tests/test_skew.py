"""Clock skew and readiness against real edges and private redis-servers.

An edge whose clock runs behind (Debian's `faketime`) shares Redis with a correct one: each ticket is
still upgraded exactly once, before and after it expired by Redis's clock. `/readyz` turns 503 when
Redis is read-only, full or write-paused, or when the edge's clock is off past the skew margin, and
back to 200 when that ends.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.edge.skew import judge
from app.ops.processes import free_port
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.polling import poll
from tests.redis_server import RedisServer, require_redis_server
from tests.servers import ServiceProcess, faketime

pytestmark = pytest.mark.redis

PROJECT = "proj_skew"
SLOW = 8  # seconds the slow edge's clock runs behind


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    keys_dir = tmp_path_factory.mktemp("skew-keys") / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 3600)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    return keys_dir, api_key


def edge(
    tmp: Path, name: str, keys_dir: Path, redis_url: str, *, clock: str = "", **env: str
) -> ServiceProcess:
    settings = {
        "REALTIME_KEYS_DIR": str(keys_dir),
        "REALTIME_REPLAY_URL": redis_url,
        "REALTIME_EDGE_NAME": name,
        "REALTIME_REPLAY_TIMEOUT_SECONDS": "2",
        # faketime's library shifts the monotonic clock too unless told not to: asyncio's timers
        # and the JWKS rate limits run on it, and only the wall clock is meant to be off.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        **env,
    }
    return ServiceProcess(
        env=settings, log_path=tmp / f"{name}.log", wrapper=faketime(clock) if clock else ()
    )


def mint_expiring(service: ServiceProcess, api_key: str, *, ttl: int = 60) -> tuple[str, int]:
    """A ticket and its `exp` (from `expires_at`: the ticket itself may be sealed)."""
    response = httpx.post(
        service.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"ttl_seconds": ttl},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return body["client_secret"], int(expires.timestamp())


def mint(service: ServiceProcess, api_key: str) -> str:
    return mint_expiring(service, api_key)[0]


def redeem(service: ServiceProcess, ticket: str) -> str:
    """`upgraded`, or the refusal's error code."""
    try:
        with connect(service.ws_url, subprotocols=[Subprotocol("opper-ticket." + ticket)], open_timeout=10):
            return "upgraded"
    except InvalidStatus as exc:
        code: str = json.loads(exc.response.body or b"{}")["error"]["code"]
        return code


def readyz(service: ServiceProcess) -> tuple[int, list[str]]:
    response = httpx.get(service.url + "/readyz", timeout=10)
    reasons: list[str] = response.json().get("reasons", [])
    return response.status_code, reasons


def wait_until(moment: float) -> None:
    """Let wall-clock time pass: the tickets' expiry is what the test is about, not a condition."""
    time.sleep(max(0.0, moment - time.time()))


@dataclass
class SkewedPair:
    redis: RedisServer
    right: ServiceProcess
    slow: ServiceProcess
    api_key: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, keyring: tuple[Path, str]) -> Iterator[SkewedPair]:
    require_redis_server()
    tmp = tmp_path_factory.mktemp("skew")
    keys_dir, api_key = keyring
    with (
        RedisServer(log_path=tmp / "redis.log") as redis_srv,
        edge(tmp, "right", keys_dir, redis_srv.url) as right,
        edge(tmp, "slow", keys_dir, redis_srv.url, clock=f"-{SLOW}s") as slow,
    ):
        yield SkewedPair(redis_srv, right, slow, api_key)
        for service in (right, slow):
            assert "Traceback" not in service.log() and " ERROR " not in service.log()


def test_a_slow_edge_never_accepts_a_used_ticket_again(pair: SkewedPair) -> None:
    """ttl_seconds=1 tickets, redeemed first on the right edge or first on the slow one.

    The slow edge accepts a ticket (by its clock) from iat + 3 s to exp + 5 s + 8 s of real time; Redis
    must still hold the used id through all of it, also after the ticket expired by Redis's clock.
    """
    minted = [mint_expiring(pair.right, pair.api_key, ttl=1) for _ in range(6)]
    first_right = [ticket for ticket, _ in minted[:3]]
    first_slow = [ticket for ticket, _ in minted[3:]]
    exp = max(expires for _, expires in minted)
    iat = min(expires for _, expires in minted) - 1  # exp = iat + ttl
    results: dict[str, list[str]] = {ticket: [] for ticket in first_right + first_slow}
    for ticket in first_right:
        results[ticket].append(redeem(pair.right, ticket))
    # The slow edge sees `iat` in its future until its clock is within the leeway (5 s) of it.
    wait_until(iat + SLOW - 5 + 1)
    # On a loaded machine a redemption can come after the edge's own window has closed (exp + leeway
    # by its clock): an expired answer is then right and says nothing about the store, so it is left
    # out. `redeem` returns after the edge judged the ticket, so the time read after it is later.
    right_closes, slow_closes = exp + 5, exp + 5 + SLOW

    def attempt(edge: ServiceProcess, ticket: str, closes: float) -> bool:
        outcome = redeem(edge, ticket)
        if outcome == "ticket_expired" and time.time() > closes:
            return False
        results[ticket].append(outcome)
        return True

    for ticket in first_slow:
        attempt(pair.slow, ticket, slow_closes)
        attempt(pair.right, ticket, right_closes)
    for ticket in first_right:  # before the ticket expired by Redis's clock (exp + leeway)
        attempt(pair.slow, ticket, slow_closes)
    # After exp + leeway by the real clock, and still before exp + leeway by the slow edge's.
    wait_until(exp + 5 + 1)
    in_window = 0
    for ticket in first_right + first_slow:
        for _ in range(3):
            in_window += attempt(pair.slow, ticket, slow_closes)
    assert in_window > 0, "no redemption fell inside the skew window; the test proved nothing"
    upgrades = Counter(outcome for outcomes in results.values() for outcome in outcomes)
    print(f"\nskewed edges ({SLOW} s): {dict(upgrades)}, {in_window} in the window")
    for outcomes in results.values():
        assert outcomes.count("upgraded") == 1, outcomes
        assert outcomes[0] == "upgraded"
        assert set(outcomes[1:]) <= {"ticket_replayed"}, outcomes  # those in a window: `in_window`
    # Once the slow edge's clock passes exp + leeway it refuses the ticket as expired.
    wait_until(exp + 5 + SLOW + 1)
    assert {redeem(pair.slow, ticket) for ticket in first_right} == {"ticket_expired"}


def test_the_slow_edge_warns_at_start_up_and_stays_ready(pair: SkewedPair) -> None:
    lines = [line for line in pair.slow.log().splitlines() if "clock:" in line]
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    assert f"{SLOW - 1}." in lines[0] or f"{SLOW}." in lines[0]
    assert "behind the replay store's" in lines[0] and "leeway" in lines[0]
    assert not [line for line in pair.right.log().splitlines() if "clock:" in line]
    assert readyz(pair.slow) == (200, []) and readyz(pair.right) == (200, [])
    offsets = {edge: clock_offset_metric(edge) for edge in (pair.slow, pair.right)}
    assert SLOW - 1 < offsets[pair.slow] < SLOW + 1 and abs(offsets[pair.right]) < 1, offsets


def clock_offset_metric(service: ServiceProcess) -> float:
    for line in httpx.get(service.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("realtime_replay_clock_offset_seconds "):
            return float(line.split()[1])
    raise AssertionError("realtime_replay_clock_offset_seconds is missing from /metrics")


def test_an_edge_off_past_the_margin_is_not_ready(
    tmp_path: Path, keyring: tuple[Path, str], pair: SkewedPair
) -> None:
    with edge(tmp_path, "fast", keyring[0], pair.redis.url, clock="+40s") as fast:
        status, reasons = readyz(fast)
        assert status == 503
        assert len(reasons) == 1 and reasons[0].startswith("clock: this edge's clock is 4")
        assert "ahead of the replay store's" in reasons[0] and "skew margin" in reasons[0]
        warning = [line for line in fast.log().splitlines() if "clock:" in line]
        assert len(warning) == 1 and "skew margin" in warning[0], warning


@pytest.mark.parametrize(
    ("offset", "level"),
    [(None, "ok"), (0.0, "ok"), (5.0, "ok"), (-5.5, "warn"), (8.0, "warn"), (30.0, "warn"), (-31, "unready")],
    ids=[
        "memory",
        "zero",
        "at-leeway",
        "past-leeway-ahead",
        "past-leeway-behind",
        "at-margin",
        "past-margin",
    ],
)
def test_judge(offset: float | None, level: str) -> None:
    verdict, message = judge(offset, leeway=5, margin=30)
    assert verdict == level
    assert (message is None) == (level == "ok")


# --- readiness against a Redis that answers PING but takes no write ---------------------------


@dataclass
class StoreState:
    name: str
    enter: Callable[[Any], object]
    leave: Callable[[Any], object]


def dead_master(client: Any) -> object:
    return client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))


STATES = [
    StoreState("read-only", dead_master, lambda client: client.execute_command("REPLICAOF", "NO", "ONE")),
    StoreState(
        "full",
        lambda client: client.config_set("maxmemory", "1"),
        lambda client: client.config_set("maxmemory", "0"),
    ),
    StoreState(
        "write-paused",
        lambda client: client.execute_command("CLIENT", "PAUSE", "60000", "WRITE"),
        lambda client: client.execute_command("CLIENT", "UNPAUSE"),
    ),
]


@pytest.fixture(scope="module")
def store_edge(
    tmp_path_factory: pytest.TempPathFactory, keyring: tuple[Path, str]
) -> Iterator[tuple[RedisServer, ServiceProcess]]:
    require_redis_server()
    tmp = tmp_path_factory.mktemp("readiness")
    with (
        RedisServer(log_path=tmp / "redis.log", extra_args=("--maxmemory-policy", "noeviction")) as server,
        # A paused write holds each probe and redemption for the store timeout (2 s, as for the
        # other edges here): long enough for every answered write on a busy machine.
        edge(tmp, "edge", keyring[0], server.url) as service,
    ):
        yield server, service


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
def test_readyz_says_503_while_redis_takes_no_write_and_200_after(
    store_edge: tuple[RedisServer, ServiceProcess], keyring: tuple[Path, str], state: StoreState
) -> None:
    server, service = store_edge
    api_key = keyring[1]
    assert readyz(service) == (200, [])
    with server.client() as client:
        assert client.ping()
        state.enter(client)
        try:
            assert client.ping()  # PING still answers: the old check said ready
            down = poll(lambda: readyz(service)[0] == 503, what="readyz to say 503")
            status, reasons = readyz(service)
            assert status == 503 and len(reasons) == 1 and reasons[0].startswith("replay store:"), reasons
            assert redeem(service, mint(service, api_key)) == "replay_store_unavailable"
        finally:
            state.leave(client)
        up = poll(lambda: readyz(service) == (200, []), what="readyz to say 200 again")
    print(f"\n{state.name}: /readyz 503 after {down:.2f} s, 200 again {up:.2f} s after recovery")
    assert redeem(service, mint(service, api_key)) == "upgraded"
    assert " ERROR " not in service.log() and "Traceback" not in service.log()


def test_two_deployments_share_one_redis_under_their_own_prefixes(
    tmp_path: Path, keyring: tuple[Path, str]
) -> None:
    """REALTIME_REPLAY_PREFIX keeps two deployments' ticket ids apart in one Redis."""
    require_redis_server()
    keys_dir, api_key = keyring
    with (
        RedisServer(log_path=tmp_path / "redis.log") as server,
        edge(tmp_path, "east", keys_dir, server.url, REALTIME_REPLAY_PREFIX="east:jti:") as east,
        edge(tmp_path, "west", keys_dir, server.url, REALTIME_REPLAY_PREFIX="west:jti:") as west,
    ):
        with server.client() as client:
            client.set("someone-else:key", b"kept")
        ticket = mint(east, api_key)
        # The same keys here, so one ticket is valid in both: each deployment lets it through once.
        assert [redeem(east, ticket), redeem(east, ticket)] == ["upgraded", "ticket_replayed"]
        assert [redeem(west, ticket), redeem(west, ticket)] == ["upgraded", "ticket_replayed"]
        assert readyz(east) == (200, []) and readyz(west) == (200, [])
        with server.client() as client:
            names = sorted(key.decode() for key in client.keys("*"))
            assert client.get("someone-else:key") == b"kept"
    used = [name for name in names if ":probe:" not in name and name != "someone-else:key"]
    probes = [name for name in names if ":probe:" in name]
    assert [name.split(":")[0] for name in used] == ["east", "west"]
    assert {name.split(":")[0] for name in probes} == {"east", "west"}
    assert all(name.startswith(("east:jti:", "west:jti:", "someone-else:")) for name in names)
