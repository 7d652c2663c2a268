"""Fleet control on real processes: two edges on a private Redis (revocations, leases, faults)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from app.edge.quota import RedisQuota, seconds_to_midnight
from app.exceptions import QuotaExceededError
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.polling import poll
from tests.redis_server import RedisServer, require_redis_server, start_cluster
from tests.servers import ServiceProcess

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent

PROJECT = "proj_fleet"
MODEL = "openai/gpt-realtime-2"
LEASE_SECONDS = 3  # short, so that a killed edge's leases run out quickly here
CAP = 3
TIMEOUT = 30.0


@dataclass
class Keys:
    runtime: str
    runtime_id: str
    admin: str
    other_admin: str


@dataclass
class Fleet:
    redis: RedisServer
    keys_dir: Path
    keys: Keys
    env: dict[str, str]
    tmp: Path
    edges: list[ServiceProcess]

    def edge(self, name: str) -> ServiceProcess:
        service = ServiceProcess(
            env={**self.env, "REALTIME_EDGE_NAME": name}, log_path=self.tmp / f"{name}.log"
        )
        self.edges.append(service)
        return service.start()


def mint(edge: ServiceProcess, key: str) -> str:
    response = httpx.post(
        edge.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {key}"},
        json={},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    ticket: str = response.json()["client_secret"]
    return ticket


def open_session(stack: ExitStack, edge: ServiceProcess, ticket: str) -> tuple[ClientConnection, str]:
    ws = stack.enter_context(
        connect(edge.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], open_timeout=TIMEOUT)
    )
    ws.send(json.dumps({"type": "session.start", "config": {"model": MODEL}}))
    started = json.loads(ws.recv(timeout=TIMEOUT))
    assert started["type"] == "session.started", started
    return ws, str(started["session_id"])


def refusal(url: str, *, ticket: str | None = None, key: str | None = None) -> tuple[int, str]:
    protocols = [Subprotocol(f"opper-ticket.{ticket}")] if ticket else None
    headers = {"Authorization": f"Bearer {key}"} if key else None
    with pytest.raises(InvalidStatus) as caught:
        with connect(url, subprotocols=protocols, additional_headers=headers, open_timeout=TIMEOUT):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]["code"]


def admin(edge: ServiceProcess, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method, edge.url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=TIMEOUT
    )


def ending(ws: ClientConnection) -> tuple[str, int | None]:
    """The code of the session's `session.terminating` and its close code."""
    code = ""
    try:
        while True:
            event = json.loads(ws.recv(timeout=TIMEOUT))
            if event["type"] == "session.terminating":
                code = event["error"]["code"]
    except ConnectionClosed:
        pass
    return code, ws.close_code


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_redis_server()
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    path, now = keys_dir / "api_keys.json", int(time.time())
    runtime, entry = create_key(path, project=PROJECT, kind="runtime", now=now)
    admin_key, _ = create_key(path, project=PROJECT, kind="management", now=now)
    other_admin, _ = create_key(path, project="proj_else", kind="management", now=now)
    # Persistence on, as a fleet runs it: a restart keeps what was written.
    server = RedisServer(
        log_path=tmp_path / "redis.log", extra_args=("--appendonly", "yes", "--appendfsync", "always")
    )
    with server:
        env = {
            "REALTIME_KEYS_DIR": str(keys_dir),
            "REALTIME_REPLAY_URL": server.url,
            "REALTIME_REPLAY_TIMEOUT_SECONDS": "2",
            "REALTIME_MAX_SESSIONS_PER_PROJECT": str(CAP),
            "REALTIME_SESSION_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        fleet = Fleet(server, keys_dir, Keys(runtime, entry.id, admin_key, other_admin), env, tmp_path, [])
        try:
            fleet.edge("a")
            fleet.edge("b")
            yield fleet
        finally:
            for edge in fleet.edges:
                edge.stop()
        for edge in fleet.edges:
            log = edge.log()
            assert "Traceback" not in log and " ERROR " not in log, log


def test_a_revocation_on_one_edge_ends_sessions_and_refuses_tickets_on_the_other(fleet: Fleet) -> None:
    a, b = fleet.edges
    stack = ExitStack()
    unredeemed = mint(a, fleet.keys.runtime)
    with stack:
        run_revocation(fleet, stack, unredeemed)


def run_revocation(fleet: Fleet, stack: ExitStack, unredeemed: str) -> None:
    a, b = fleet.edges
    ws_a, _ = open_session(stack, a, mint(a, fleet.keys.runtime))
    ws_b, session_b = open_session(stack, b, mint(a, fleet.keys.runtime))
    listed = admin(a, fleet.keys.admin, "GET", "/v3/admin/sessions").json()["data"]
    assert {(s["edge"], s["project"]) for s in listed} == {("a", PROJECT), ("b", PROJECT)}
    assert session_b in {s["session_id"] for s in listed}
    response = admin(
        a, fleet.keys.admin, "POST", "/v3/admin/revocations", {"api_key_id": fleet.keys.runtime_id}
    )
    assert response.status_code == 201, response.text
    assert ending(ws_a) == ("revoked", 1008)
    assert ending(ws_b) == ("revoked", 1008)
    assert refusal(b.ws_url, ticket=unredeemed) == (401, "ticket_revoked")
    assert refusal(b.ws_url, key=fleet.keys.runtime) == (401, "ticket_revoked")
    revocations = admin(b, fleet.keys.admin, "GET", "/v3/admin/revocations").json()["data"]
    assert [(r["kind"], r["value"]) for r in revocations] == [("api_key", fleet.keys.runtime_id)]
    # Another project's management key sees none of it.
    assert admin(b, fleet.keys.other_admin, "GET", "/v3/admin/revocations").json()["data"] == []


def test_a_revocation_survives_a_redis_restart_and_binds_an_edge_started_later(fleet: Fleet) -> None:
    a, _ = fleet.edges
    ticket = mint(a, fleet.keys.runtime)
    assert (
        admin(a, fleet.keys.admin, "POST", "/v3/admin/revocations", {"project": PROJECT}).status_code == 201
    )
    fleet.redis.stop()
    fleet.redis.start()
    late = fleet.edge("c")
    for edge in (a, late):
        assert refusal(edge.ws_url, ticket=ticket) == (401, "ticket_revoked")


def test_with_redis_down_revocation_checks_and_caps_fail_closed(fleet: Fleet) -> None:
    a, _ = fleet.edges
    fleet.redis.stop()
    try:
        # A bearer-key session consumes no ticket: only the revocation check and the lease ask Redis.
        assert refusal(a.ws_url, key=fleet.keys.runtime) == (503, "replay_store_unavailable")
        response = admin(a, fleet.keys.admin, "POST", "/v3/admin/revocations", {"project": PROJECT})
        assert (response.status_code, response.json()["error"]["code"]) == (503, "replay_store_unavailable")
    finally:
        fleet.redis.start()
    poll(lambda: _opens(a, fleet.keys.runtime), what="the edge to take sessions again")


def _opens(edge: ServiceProcess, key: str) -> bool:
    try:
        with connect(
            edge.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=TIMEOUT
        ):
            return True
    except InvalidStatus:
        return False


def test_a_killed_edges_sessions_stop_counting_once_their_leases_run_out(fleet: Fleet) -> None:
    a, b = fleet.edges
    with ExitStack() as stack:
        held = [open_session(stack, a, mint(a, fleet.keys.runtime))[0] for _ in range(CAP)]
        kill_with_sessions_open(fleet, held)


def kill_with_sessions_open(fleet: Fleet, held: list[ClientConnection]) -> None:
    a, b = fleet.edges
    assert refusal(b.ws_url, ticket=mint(a, fleet.keys.runtime)) == (429, "too_many_sessions")
    killed = time.monotonic()
    a.signal(signal.SIGKILL)
    a.wait(timeout=TIMEOUT)
    for ws in held:
        ws.close_socket()

    def listed_on_a() -> list[dict[str, Any]]:
        listed = admin(b, fleet.keys.admin, "GET", "/v3/admin/sessions").json()["data"]
        return [session for session in listed if session["edge"] == "a"]

    assert len(listed_on_a()) == CAP
    poll(lambda: not listed_on_a(), what="a killed edge's leases to run out")
    elapsed = time.monotonic() - killed
    print(f"a killed edge's sessions stopped counting after {elapsed:.1f} s (lease {LEASE_SECONDS} s)")
    with ExitStack() as stack:  # the whole cap is free again
        for _ in range(CAP):
            open_session(stack, b, mint(b, fleet.keys.runtime))


def test_fleet_control_works_on_a_redis_cluster(tmp_path: Path) -> None:
    """The URL names one node of a two-shard cluster: fleet keys share one shard, reached by MOVED."""
    require_redis_server()
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    path, now = keys_dir / "api_keys.json", int(time.time())
    runtime, _ = create_key(path, project=PROJECT, kind="runtime", now=now)
    admin_key, _ = create_key(path, project=PROJECT, kind="management", now=now)
    nodes = start_cluster(tmp_path)
    try:
        edges = []
        for node in nodes:  # one edge per node: one of them is sent elsewhere by MOVED
            env = {
                "REALTIME_KEYS_DIR": str(keys_dir),
                "REALTIME_REPLAY_URL": node.url,
                "REALTIME_REPLAY_TIMEOUT_SECONDS": "2",
                "REALTIME_MAX_SESSIONS_PER_PROJECT": "1",
            }
            edges.append(ServiceProcess(env=env, log_path=tmp_path / f"edge-{node.port}.log").start())
        try:
            with ExitStack() as stack:
                ws, _ = open_session(stack, edges[0], mint(edges[0], runtime))
                assert refusal(edges[1].ws_url, ticket=mint(edges[1], runtime)) == (429, "too_many_sessions")
                response = admin(edges[1], admin_key, "POST", "/v3/admin/revocations", {"project": PROJECT})
                assert response.status_code == 201, response.text
                assert ending(ws) == ("revoked", 1008)
        finally:
            for edge in edges:
                edge.stop()
        for edge in edges:
            assert "Traceback" not in edge.log() and " ERROR " not in edge.log(), edge.log()
    finally:
        for node in nodes:
            node.stop()


def _command(fleet: Fleet, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update(REALTIME_KEYS_DIR=str(fleet.keys_dir), REALTIME_REPLAY_URL=fleet.redis.url)
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_revoke_and_make_revoke_api_key_reach_every_edge(fleet: Fleet) -> None:
    a, b = fleet.edges
    with ExitStack() as stack:
        ws, session_id = open_session(stack, b, mint(a, fleet.keys.runtime))
        done = _command(
            fleet, "app.ops.revocations", "revoke", "--session", session_id, "--reason", "by script"
        )
        assert done.returncode == 0, done.stderr
        assert ending(ws) == ("revoked", 1008)
    unredeemed = mint(a, fleet.keys.runtime)
    with ExitStack() as stack:
        ws, _ = open_session(stack, b, mint(a, fleet.keys.runtime))
        done = _command(fleet, "app.apikeys", "revoke", "--id", fleet.keys.runtime_id)
        assert done.returncode == 0, done.stderr
        assert "revoked across the fleet" in done.stdout
        assert ending(ws) == ("revoked", 1008)
    assert refusal(a.ws_url, ticket=unredeemed) == (401, "ticket_revoked")


def test_make_revoke_on_memory_says_to_use_the_admin_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update(REALTIME_KEYS_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "app.ops.revocations", "revoke", "--project", "p"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "admin API" in done.stderr


def test_the_audio_quota_is_shared_by_the_fleet(fleet: Fleet) -> None:
    quotas = [
        RedisQuota(fleet.redis.url, prefix=f"q{number}:", minutes_per_day=1, timeout=2, clock=time.time)
        for number in (1, 1, 2)
    ]

    async def run() -> None:
        one, other_edge, other_fleet = quotas
        try:
            await one.record_audio(PROJECT, 45.0)
            await other_edge.record_audio(PROJECT, 15.0)
            with pytest.raises(QuotaExceededError) as refused:
                await one.check(PROJECT)
            assert 0 < refused.value.retry_after <= seconds_to_midnight(time.time() - 5)
            await other_fleet.check(PROJECT)  # another prefix: another deployment
            await one.check("proj_else")
        finally:
            for quota in quotas:
                await quota.aclose()

    asyncio.run(run())
