"""Revocations, the admin API and the daily audio quota in one process (memory://)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from app.clock import FakeClock
from app.config import Settings
from app.edge.quota import MemoryQuota, seconds_to_midnight
from app.edge.revocations import Revocation, RevocationIndex, Subject, lifetime
from app.exceptions import QuotaExceededError
from app.main import create_app
from app.tickets.apikeys import create_key, read_keys, revoke_key
from app.tickets.keys import KeySet
from tests.conftest import PROJECT, START
from tests.sealing import claims_of

MODEL = "openai/gpt-realtime-2"
OTHER = "proj_other"


class Keys:
    """Runtime and management keys of two projects, and one for every project."""

    def __init__(self, settings: Settings) -> None:
        path = settings.api_keys_path
        self.runtime, self.runtime_entry = create_key(path, project=PROJECT, kind="runtime", now=int(START))
        self.other_runtime, self.other_entry = create_key(path, project=OTHER, kind="runtime", now=int(START))
        self.admin, _ = create_key(path, project=PROJECT, kind="management", now=int(START))
        self.other_admin, _ = create_key(path, project=OTHER, kind="management", now=int(START))
        self.root, _ = create_key(path, project="*", kind="management", now=int(START))


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings)


@pytest.fixture
def quota_settings(keys_dir: Path) -> Settings:
    return Settings(keys_dir=keys_dir, project_audio_minutes_per_day=0.01)


@pytest.fixture
def client(settings: Settings, clock: FakeClock, keys: Keys) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=clock)) as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def mint(client: TestClient, key: str) -> str:
    response = client.post("/v3/realtime-sessions", headers=bearer(key), json={})
    assert response.status_code == 200, response.text
    ticket: str = response.json()["client_secret"]
    return ticket


def denial(client: TestClient, ticket: str) -> tuple[int, str]:
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{ticket}"]):
            pass
    response = denied.value
    return response.status_code, response.json()["error"]["code"]


def revoke(client: TestClient, key: str, **body: Any) -> tuple[int, dict[str, Any]]:
    response = client.post("/v3/admin/revocations", headers=bearer(key), json=body)
    return response.status_code, response.json()


# The rule ------------------------------------------------------------------------------------


def test_a_revocation_covers_what_was_issued_until_it_and_a_session_id_always() -> None:
    index = RevocationIndex()
    index.add(Revocation("project", "p", at=100.0, expires_at=1000.0))
    index.add(Revocation("session", "sess_1", at=100.0, expires_at=1000.0))
    assert index.matching(Subject("p", None, None, issued_at=100.0)) is not None
    assert index.matching(Subject("p", None, None, issued_at=101.0)) is None  # issued after it
    assert index.matching(Subject("q", None, None, issued_at=50.0)) is None
    assert index.matching(Subject("q", None, None, issued_at=500.0, session_id="sess_1")) is not None
    index.expire(1000.0)
    assert len(index) == 0


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"kind": "user", "value": "x", "at": 1, "expires_at": 2},
        {"kind": "kid", "value": 3, "at": 1},
    ],
    ids=["null", "list", "unknown-kind", "bad-value"],
)
def test_a_malformed_stored_revocation_is_ignored(data: object) -> None:
    assert Revocation.from_json(data) is None


def test_the_ticket_carries_the_minting_keys_id(client: TestClient, keys: Keys, keys_dir: Path) -> None:
    claims = claims_of(mint(client, keys.runtime), keys_dir)
    assert claims["akid"] == keys.runtime_entry.id


# Tickets and sessions --------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["api_key_id", "project", "kid"])
def test_a_revoked_key_project_or_signing_key_refuses_its_unredeemed_tickets(
    client: TestClient, keys: Keys, keys_dir: Path, what: str
) -> None:
    ticket, spared = mint(client, keys.runtime), mint(client, keys.other_runtime)
    claims = claims_of(ticket, keys_dir)
    signer = KeySet.load(keys_dir).signer
    assert signer is not None
    value = {"api_key_id": claims["akid"], "project": claims["sub"], "kid": signer.kid}[what]
    status, body = revoke(client, keys.root, **{what: value}, reason="leaked")
    assert status == 201, body
    assert body["revocation"]["kind"] == {"api_key_id": "api_key", "project": "project", "kid": "kid"}[what]
    assert denial(client, ticket) == (401, "ticket_revoked")
    if what == "api_key_id":  # the key itself is dead: the mint refuses it too
        response = client.post("/v3/realtime-sessions", headers=bearer(keys.runtime), json={})
        assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_credentials")
    if what != "kid":  # a signing key signs every project's tickets
        with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{spared}"]) as ws:
            ws.send_json({"type": "session.start", "config": {"model": MODEL}})
            assert ws.receive_json()["type"] == "session.started"


def test_tickets_minted_after_a_project_revocation_work(
    client: TestClient, keys: Keys, clock: FakeClock
) -> None:
    assert revoke(client, keys.admin, project=PROJECT)[0] == 201
    clock.advance(1)
    ticket = mint(client, keys.runtime)
    with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{ticket}"]) as ws:
        ws.send_json({"type": "session.start", "config": {"model": MODEL}})
        assert ws.receive_json()["type"] == "session.started"


@pytest.mark.parametrize("what", ["session_id", "api_key_id", "project"])
def test_a_revocation_ends_the_live_session_with_revoked(
    client: TestClient, keys: Keys, keys_dir: Path, what: str
) -> None:
    ticket = mint(client, keys.runtime)
    with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{ticket}"]) as ws:
        ws.send_json({"type": "session.start", "config": {"model": MODEL}})
        started = ws.receive_json()
        assert started["type"] == "session.started"
        listed = client.get("/v3/admin/sessions", headers=bearer(keys.admin)).json()["data"]
        assert [s["session_id"] for s in listed] == [started["session_id"]]
        assert listed[0]["model"] == MODEL and listed[0]["api_key_id"] == keys.runtime_entry.id
        value = {
            "session_id": started["session_id"],
            "api_key_id": keys.runtime_entry.id,
            "project": PROJECT,
        }[what]
        assert revoke(client, keys.admin, **{what: value}, reason="abuse")[0] == 201
        ending = ws.receive_json()
        assert ending["type"] == "session.terminating"
        assert ending["error"]["code"] == "revoked" and "abuse" in ending["error"]["message"]
        closed = ws.receive()
        assert closed["type"] == "websocket.close" and closed["code"] == 1008
    assert client.get("/v3/admin/sessions", headers=bearer(keys.admin)).json()["data"] == []


def test_make_revoke_api_key_revokes_its_tickets_and_sessions_in_a_running_process(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    ticket = mint(client, keys.runtime)
    live = mint(client, keys.runtime)
    with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{live}"]) as ws:
        ws.send_json({"type": "session.start", "config": {"model": MODEL}})
        assert ws.receive_json()["type"] == "session.started"
        revoke_key(settings.api_keys_path, keys.runtime_entry.id, now=int(START))
        ending = ws.receive_json()  # the process rereads the key file within a second
        assert (ending["type"], ending["error"]["code"]) == ("session.terminating", "revoked")
    assert denial(client, ticket) == (401, "ticket_revoked")


# The admin API's failure matrix -------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "code"),
    [
        (None, "GET", "/v3/admin/sessions", None, 401, "missing_credentials"),
        ("runtime", "GET", "/v3/admin/sessions", None, 401, "invalid_credentials"),
        ("runtime", "POST", "/v3/admin/revocations", {"project": PROJECT}, 401, "invalid_credentials"),
        ("runtime", "GET", "/v3/admin/revocations", None, 401, "invalid_credentials"),
        ("garbage", "GET", "/v3/admin/sessions", None, 401, "invalid_credentials"),
        ("other_admin", "GET", f"/v3/admin/sessions?project={PROJECT}", None, 403, "forbidden"),
        ("other_admin", "POST", "/v3/admin/revocations", {"project": PROJECT}, 403, "forbidden"),
        ("admin", "POST", "/v3/admin/revocations", {"kid": "k1"}, 403, "forbidden"),
        ("other_admin", "POST", "/v3/admin/revocations", {"api_key_id": "OWN"}, 404, "not_found"),
        ("other_admin", "POST", "/v3/admin/revocations", {"session_id": "LIVE"}, 404, "not_found"),
        ("admin", "POST", "/v3/admin/revocations", {"session_id": "sess_nope"}, 404, "not_found"),
        ("admin", "POST", "/v3/admin/revocations", {}, 400, "invalid_request"),
        ("admin", "POST", "/v3/admin/revocations", {"project": PROJECT, "kid": "k"}, 400, "invalid_request"),
        ("admin", "POST", "/v3/admin/revocations", {"user": "x"}, 400, "invalid_request"),
        ("admin", "POST", "/v3/admin/revocations", {"project": 3}, 400, "invalid_request"),
        ("admin", "POST", "/v3/admin/revocations", {"project": PROJECT, "reason": 1}, 400, "invalid_request"),
        ("admin", "POST", "/v3/admin/revocations", [], 400, "invalid_json"),
    ],
    ids=[
        "no-key",
        "runtime-list",
        "runtime-revoke",
        "runtime-revocations",
        "unknown-key",
        "other-project-list",
        "other-project-revoke",
        "project-key-revokes-signing-key",
        "other-projects-api-key",
        "other-projects-session",
        "unknown-session",
        "empty-body",
        "two-fields",
        "unknown-field",
        "not-a-string",
        "reason-not-a-string",
        "not-an-object",
    ],
)
def test_admin_api_refusals(
    client: TestClient,
    keys: Keys,
    who: str | None,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
) -> None:
    ticket = mint(client, keys.runtime)
    with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{ticket}"]) as ws:
        ws.send_json({"type": "session.start", "config": {"model": MODEL}})
        session_id = ws.receive_json()["session_id"]
        if isinstance(body, dict):
            body = {k: {"OWN": keys.runtime_entry.id, "LIVE": session_id}.get(v, v) for k, v in body.items()}
        key = {
            "runtime": keys.runtime,
            "garbage": "opmak-nope",
            "admin": keys.admin,
            "other_admin": keys.other_admin,
        }.get(who or "")
        headers = bearer(key) if key else {}
        response = client.request(method, path, headers=headers, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
        # Nothing was revoked: the session still answers.
        ws.send_json({"type": "text.input", "text": "hi"})
        ws.send_json({"type": "response.create"})
        assert ws.receive_json()["type"] != "session.terminating"


def test_a_project_key_sees_only_its_own_sessions_and_revocations(client: TestClient, keys: Keys) -> None:
    mine, theirs = mint(client, keys.runtime), mint(client, keys.other_runtime)
    with (
        client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{mine}"]) as a,
        client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{theirs}"]) as b,
    ):
        for ws in (a, b):
            ws.send_json({"type": "session.start", "config": {"model": MODEL}})
            assert ws.receive_json()["type"] == "session.started"
        own = client.get("/v3/admin/sessions", headers=bearer(keys.admin)).json()["data"]
        every = client.get("/v3/admin/sessions", headers=bearer(keys.root)).json()["data"]
        assert {s["project"] for s in own} == {PROJECT}
        assert {s["project"] for s in every} == {PROJECT, OTHER}
        assert revoke(client, keys.other_admin, project=OTHER, reason="theirs")[0] == 201
        assert b.receive_json()["error"]["code"] == "revoked"
    listed = client.get("/v3/admin/revocations", headers=bearer(keys.admin)).json()["data"]
    assert listed == []
    listed = client.get("/v3/admin/revocations", headers=bearer(keys.root)).json()["data"]
    assert [(r["kind"], r["value"], r["reason"]) for r in listed] == [("project", OTHER, "theirs")]


# The daily audio quota -------------------------------------------------------------------------


def test_quota_counts_a_days_audio_and_refuses_until_midnight(clock: FakeClock) -> None:
    quota = MemoryQuota(minutes_per_day=1, clock=clock)

    async def run() -> None:
        await quota.check(PROJECT)
        await quota.record_audio(PROJECT, 59.0)
        await quota.check(PROJECT)
        await quota.record_audio(PROJECT, 1.0)
        with pytest.raises(QuotaExceededError) as refused:
            await quota.check(PROJECT)
        assert refused.value.code == "quota_exceeded"
        assert refused.value.retry_after == seconds_to_midnight(clock.now())
        await quota.check(OTHER)
        clock.advance(seconds_to_midnight(clock.now()))
        await quota.check(PROJECT)  # a new UTC day

    asyncio.run(run())


def test_a_project_past_its_quota_gets_429_with_retry_after_and_live_sessions_go_on(
    quota_settings: Settings, clock: FakeClock
) -> None:
    keys = Keys(quota_settings)
    audio = base64.b64encode(bytes(48_000)).decode()  # one second at 24 kHz
    with TestClient(create_app(quota_settings, clock=clock)) as client:
        first, second = mint(client, keys.runtime), mint(client, keys.runtime)
        with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{second}"]) as live:
            live.send_json({"type": "session.start", "config": {"model": MODEL}})
            assert live.receive_json()["type"] == "session.started"
            with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{first}"]) as ws:
                ws.send_json({"type": "session.start", "config": {"model": MODEL}})
                assert ws.receive_json()["type"] == "session.started"
                ws.send_json({"type": "audio.append", "audio": audio})  # 0.6 s is the quota: over it
            # The ended session's audio is counted as its handler finishes: ask until it is.
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "the ended session's audio was never counted"
                third = mint(client, keys.runtime)
                try:
                    with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{third}"]):
                        pass
                except WebSocketDenialResponse as denied:
                    refused = denied
                    break
                time.sleep(0.05)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "quota_exceeded"
            assert int(refused.headers["retry-after"]) == seconds_to_midnight(clock.now())
            # The session already open goes on.
            live.send_json({"type": "text.input", "text": "still here"})
            live.send_json({"type": "response.create"})
            assert live.receive_json()["type"] == "response.started"
        other = mint(client, keys.other_runtime)
        with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{other}"]) as ws:
            ws.send_json({"type": "session.start", "config": {"model": MODEL}})
            assert ws.receive_json()["type"] == "session.started"


@pytest.mark.parametrize(
    ("port", "status", "code"),
    [(80, 404, "not_found"), (9001, 401, "missing_credentials")],
    ids=["public-port", "admin-port"],
)
def test_with_an_admin_port_the_admin_api_answers_there_only(
    keys_dir: Path, clock: FakeClock, port: int, status: int, code: str
) -> None:
    app = create_app(Settings(keys_dir=keys_dir, admin_port=9001), clock=clock)
    with TestClient(app, base_url=f"http://127.0.0.1:{port}") as client:
        for path in ("/v3/admin/sessions", "/v3/admin/revocations"):
            response = client.get(path)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_a_key_revoked_through_the_admin_api_stays_revoked_after_the_fleet_entry_expires(
    client: TestClient, keys: Keys, clock: FakeClock, settings: Settings
) -> None:
    key_id = keys.runtime_entry.id
    assert revoke(client, keys.root, api_key_id=key_id)[0] == 201
    # Marked in the key file, as `make revoke-api-key` marks it: the entry's expiry does not undo it.
    assert [key.revoked_at is not None for key in read_keys(settings.api_keys_path) if key.id == key_id] == [
        True
    ]
    clock.advance(
        lifetime(
            leeway=settings.leeway_seconds,
            skew_margin=settings.clock_skew_margin_seconds,
            max_duration=settings.max_duration_seconds,
        )
        + 60
    )
    response = client.post("/v3/realtime-sessions", headers=bearer(keys.runtime), json={})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_credentials")
    assert "revoked" in response.json()["error"]["message"]


def test_a_management_key_revoked_through_the_admin_api_can_do_nothing_more(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    (admin_id,) = [
        key.id
        for key in read_keys(settings.api_keys_path)
        if key.kind == "management" and key.project == PROJECT
    ]
    assert revoke(client, keys.root, api_key_id=admin_id)[0] == 201
    response = client.get("/v3/admin/revocations", headers=bearer(keys.admin))
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_credentials")
    assert revoke(client, keys.admin, project=PROJECT)[0] == 401
