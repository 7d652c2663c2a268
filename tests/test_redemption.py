"""`GET /v3/realtime` over real handshakes: the denial matrix, subprotocol answers, single use, logs."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from app.tickets import jwe
from app.tickets.apikeys import ApiKey, create_key, digest, read_keys, write_keys
from app.tickets.keyfiles import locked
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE, SealKeySet
from tests.polling import poll
from tests.servers import ServiceProcess

ORIGIN_OK = "https://app.example"
PROJECT = "proj_edge"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Edge:
    """A running service with keys, a runtime key, and helpers to mint and connect."""

    def __init__(self, service: ServiceProcess, keys_dir: Path, api_key: str) -> None:
        self.service = service
        self.keys_dir = keys_dir
        self.api_key = api_key
        self.secrets: list[str] = [api_key]

    def mint(self, **body: Any) -> str:
        response = httpx.post(
            self.service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json=body,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["client_secret"]
        self.secrets.append(token)
        return token

    def forge(
        self,
        *,
        iat: int,
        exp: int,
        kid: str | None = None,
        private: Ed25519PrivateKey | None = None,
        alg: str = "EdDSA",
    ) -> str:
        signer = KeySet.load(self.keys_dir).signer
        assert signer is not None and signer.private_key is not None
        header = {"alg": alg, "kid": kid or signer.kid, "typ": "opper-ticket+jwt"}
        claims = {
            "iss": "opper-realtime",
            "aud": "opper-realtime",
            "sub": PROJECT,
            "jti": b64(Ed25519PrivateKey.generate().sign(b"jti")[:16]),
            "iat": iat,
            "exp": exp,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = (private or signer.private_key).sign(signing_input.encode())
        token = f"{signing_input}.{b64(signature)}"
        self.secrets.append(token)
        return token


def start_edge(tmp_path: Path, name: str, **env: str) -> tuple[ServiceProcess, Path, str]:
    keys_dir = tmp_path / f"keys-{name}"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    service = ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir), **env},
        log_path=tmp_path / f"{name}.log",
    ).start()
    return service, keys_dir, api_key


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp_path = tmp_path_factory.mktemp("edge")
    service, keys_dir, api_key = start_edge(
        tmp_path,
        "edge",
        REALTIME_ALLOWED_ORIGINS=ORIGIN_OK,
        REALTIME_MAX_SESSIONS_PER_PROJECT="1",
    )
    with service:
        running = Edge(service, keys_dir, api_key)
        # A fresh memory:// store refuses tickets it did not mint itself until its restart window
        # (leeway + 1 s) has passed; the forgeries below are such tickets (docs/operations.md).
        poll(lambda: _forgery_redeems(running), "the fresh store's restart window to pass")
        yield running


def _forgery_redeems(edge: Edge) -> bool:
    now = int(time.time())
    try:
        with open_ws(edge, ticket=edge.forge(iat=now, exp=now + 60)):
            return True
    except InvalidStatus as exc:
        code = json.loads(exc.response.body or b"{}")["error"]["code"]
        assert code in ("ticket_not_redeemable", "too_many_sessions"), code
        return False


def open_ws(
    edge: Edge,
    *,
    ticket: str | None = None,
    transport: str = "subprotocol",
    extra_protocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    origin: str | None = None,
) -> ClientConnection:
    url = edge.service.ws_url
    protocols = list(extra_protocols)
    if ticket is not None and transport == "subprotocol":
        protocols.insert(0, f"opper-ticket.{ticket}")
    elif ticket is not None:
        url += f"?ticket={ticket}"
    return connect(
        url,
        subprotocols=protocols or None,  # type: ignore[arg-type]
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]
        open_timeout=10,
    )


def denial(edge: Edge, **options: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    with pytest.raises(InvalidStatus) as caught:
        open_ws(edge, **options).close()
    response = caught.value.response
    body: dict[str, Any] = json.loads(response.body or b"{}")
    return response.status_code, body, dict(response.headers)


TRANSPORTS = ["subprotocol", "query"]
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, RFC 8032 section 5.1


def non_canonical(token: str) -> str:
    """The same ticket with its signature's S replaced by S + L: the same equation, other bytes."""
    signing_input, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    s = int.from_bytes(raw[32:], "little") + ED25519_ORDER
    return f"{signing_input}.{b64(raw[:32] + s.to_bytes(32, 'little'))}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_fresh_ticket_opens_once_then_is_replayed(edge: Edge, transport: str) -> None:
    ticket = edge.mint()
    with open_ws(edge, ticket=ticket, transport=transport) as ws:
        ws.send(json.dumps({"type": "session.start", "config": {}}))
        assert json.loads(ws.recv(timeout=10))["type"] in {"session.started", "error"}
    status, body, headers = denial(edge, ticket=ticket, transport=transport)
    assert (status, body["error"]["code"]) == (401, "ticket_replayed")
    assert ticket not in json.dumps(body)


def test_no_credentials(edge: Edge) -> None:
    status, body, _ = denial(edge)
    assert (status, body["error"]["code"]) == (401, "missing_credentials")


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda e: "garbage", 401, "invalid_ticket"),
        (lambda e: "", 401, "invalid_ticket"),
        (lambda e: e.forge(iat=int(time.time()) - 200, exp=int(time.time()) - 60), 401, "ticket_expired"),
        (
            lambda e: e.forge(iat=int(time.time()), exp=int(time.time()) + 60, kid="not-a-known-kid"),
            401,
            "unknown_key",
        ),
        (
            lambda e: e.forge(
                iat=int(time.time()), exp=int(time.time()) + 60, private=Ed25519PrivateKey.generate()
            ),
            401,
            "invalid_ticket",
        ),
        (lambda e: e.forge(iat=int(time.time()) - 3600, exp=int(time.time()) - 3400), 401, "ticket_expired"),
        (
            lambda e: non_canonical(e.forge(iat=int(time.time()), exp=int(time.time()) + 60)),
            401,
            "invalid_ticket",
        ),
    ],
    ids=[
        "garbage",
        "empty",
        "expired",
        "unknown-kid",
        "bad-signature",
        "expired-long-ago",
        "non-canonical-s",
    ],
)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ticket_refusals(edge: Edge, transport: str, make: Any, status: int, code: str) -> None:
    ticket = make(edge)
    got_status, body, headers = denial(edge, ticket=ticket, transport=transport)
    assert (got_status, body["error"]["code"]) == (status, code)
    if code == "ticket_expired":
        assert body["error"]["details"]["server_time"].endswith("Z")
    if ticket:
        assert ticket not in json.dumps(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ticket_issued_before_the_process_started_is_not_redeemable(edge: Edge, transport: str) -> None:
    now = int(time.time())
    ticket = edge.forge(iat=now - 290, exp=now + 5)
    status, body, _ = denial(edge, ticket=ticket, transport=transport)
    assert (status, body["error"]["code"]) == (401, "ticket_not_redeemable")
    assert "restart" in body["error"]["message"] or "started" in body["error"]["message"]


def test_two_tickets_are_ambiguous(edge: Edge) -> None:
    first, second = edge.mint(), edge.mint()
    status, body, _ = denial(edge, ticket=first, extra_protocols=(f"opper-ticket.{second}",))
    assert (status, body["error"]["code"]) == (400, "ambiguous_ticket")
    status, body, _ = denial(
        edge, ticket=first, transport="query", extra_protocols=(f"opper-ticket.{second}",)
    )
    assert (status, body["error"]["code"]) == (400, "ambiguous_ticket")
    # Neither was consumed: both still open a session.
    for ticket in (first, second):
        with open_ws(edge, ticket=ticket) as ws:
            assert ws.subprotocol == f"opper-ticket.{ticket}"


def test_the_same_ticket_twice_counts_once(edge: Edge) -> None:
    ticket = edge.mint()
    with open_ws(edge, ticket=ticket, transport="query", extra_protocols=(f"opper-ticket.{ticket}",)) as ws:
        assert ws.subprotocol == f"opper-ticket.{ticket}"


def test_prefix_is_case_sensitive(edge: Edge) -> None:
    ticket = edge.mint()
    status, body, _ = denial(edge, extra_protocols=(f"OPPER-TICKET.{ticket}",))
    assert (status, body["error"]["code"]) == (401, "missing_credentials")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_origin_not_allowed_and_ticket_still_redeemable(edge: Edge, transport: str) -> None:
    ticket = edge.mint()
    status, body, _ = denial(edge, ticket=ticket, transport=transport, origin="https://evil.example")
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    with open_ws(edge, ticket=ticket, transport=transport, origin=ORIGIN_OK):
        pass


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_cap_and_ticket_still_redeemable(edge: Edge, transport: str) -> None:
    held = edge.mint()
    waiting = edge.mint()
    with open_ws(edge, ticket=held):
        status, body, _ = denial(edge, ticket=waiting, transport=transport)
        assert (status, body["error"]["code"]) == (429, "too_many_sessions")
    deadline = time.monotonic() + 10
    while True:  # the server notices the close asynchronously
        try:
            with open_ws(edge, ticket=waiting, transport=transport):
                break
        except InvalidStatus as exc:
            assert exc.response.status_code == 429
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_bearer_key_opens_a_session_and_bad_key_is_refused(edge: Edge) -> None:
    with open_ws(edge, headers={"Authorization": f"Bearer {edge.api_key}"}) as ws:
        assert ws.subprotocol is None
    status, body, _ = denial(edge, headers={"Authorization": "Bearer oprk-nope"})
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")


def test_ticket_wins_over_a_bearer_key(edge: Edge) -> None:
    status, body, _ = denial(edge, ticket="garbage", headers={"Authorization": f"Bearer {edge.api_key}"})
    assert (status, body["error"]["code"]) == (401, "invalid_ticket")


@pytest.mark.parametrize(
    ("transport", "extra", "expected"),
    [
        ("subprotocol", (), "ticket"),
        ("subprotocol", ("realtime",), "realtime"),
        ("query", ("realtime",), "realtime"),
        ("query", (), None),
    ],
    ids=["ticket-only", "ticket-and-realtime", "query-and-realtime", "query-only"],
)
def test_subprotocol_answer(edge: Edge, transport: str, extra: tuple[str, ...], expected: str | None) -> None:
    ticket = edge.mint()
    with open_ws(edge, ticket=ticket, transport=transport, extra_protocols=extra) as ws:
        assert ws.subprotocol == (f"opper-ticket.{ticket}" if expected == "ticket" else expected)


def test_full_memory_store_refuses_new_and_held_tickets(tmp_path: Path) -> None:
    service, keys_dir, api_key = start_edge(tmp_path, "full", REALTIME_REPLAY_MEMORY_MAX="1")
    with service:
        small = Edge(service, keys_dir, api_key)
        first = small.mint()
        with open_ws(small, ticket=first):
            pass
        status, body, headers = denial(small, ticket=small.mint())
        assert (status, body["error"]["code"]) == (503, "replay_store_full")
        assert int(headers["retry-after"]) >= 1
        status, body, _ = denial(small, ticket=first)
        assert (status, body["error"]["code"]) == (401, "ticket_replayed")


def test_unreachable_redis_fails_closed(tmp_path: Path) -> None:
    service, keys_dir, api_key = start_edge(
        tmp_path,
        "noredis",
        REALTIME_REPLAY_URL="redis://127.0.0.1:9/0",
        REALTIME_REPLAY_TIMEOUT_SECONDS="0.2",
    )
    with service:
        edge = Edge(service, keys_dir, api_key)
        ticket = edge.mint()
        status, body, headers = denial(edge, ticket=ticket)
        assert (status, body["error"]["code"]) == (503, "replay_store_unavailable")
        assert "retry-after" in headers
        metrics = httpx.get(service.url + "/metrics", timeout=10).text
        assert 'realtime_redemptions_total{code="replay_store_unavailable"} 1.0' in metrics
        assert "realtime_replay_store_errors_total 1.0" in metrics


def active_sessions(edge: Edge) -> float:
    metrics = httpx.get(edge.service.url + "/metrics", timeout=10).text
    counts = re.findall(r"^realtime_active_sessions\{project=\"[^\"]*\"\} ([0-9.]+)$", metrics, re.M)
    assert counts, metrics
    return sum(float(count) for count in counts)


def test_clients_vanishing_mid_response_leave_no_errors_and_no_sessions(edge: Edge) -> None:
    for _ in range(5):
        with open_ws(edge, ticket=edge.mint()) as ws:
            ws.send(json.dumps({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}))
            assert json.loads(ws.recv(timeout=10))["type"] == "session.started"
            ws.send(
                json.dumps({"type": "text.input", "text": "a question long enough to stream for a while"})
            )
            ws.send(json.dumps({"type": "response.create"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "response.started"
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame, deltas on their way
        deadline = time.monotonic() + 10
        while active_sessions(edge) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert active_sessions(edge) == 0  # the session ended; its cap slot is free again
    # No ERROR line or traceback from the vanished clients: checked by the log test below.


def test_logs_hold_no_secrets_and_no_error_lines(edge: Edge) -> None:
    """Runs after the tests above in this module: every transport and denial has gone through."""
    ticket = edge.mint()
    with open_ws(edge, ticket=ticket, transport="query"):
        pass
    denial(edge, ticket=ticket, transport="query")
    denial(edge, ticket=ticket)
    denial(edge, headers={"Authorization": f"Bearer {edge.api_key}x"})
    log = edge.service.settled_log()
    assert "redemption ok" in log and "redemption ticket_replayed" in log
    assert "[redacted]" in log  # the query ticket was in uvicorn's lines, and was cut out
    assert len(edge.secrets) > 20
    for secret in edge.secrets:
        assert secret not in log
        assert secret.split(".")[-1] not in log  # not even the signature part
    assert " ERROR " not in log and "Traceback" not in log


def test_a_session_logs_its_acceptance_and_its_end(edge: Edge) -> None:
    with open_ws(edge, ticket=edge.mint()) as ws:
        ws.send(json.dumps({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}))
        started = json.loads(ws.recv(timeout=10))
        assert started["type"] == "session.started"
    session = started["session_id"]
    deadline = time.monotonic() + 10
    while f"session ended session_id={session}" not in (log := edge.service.settled_log()):
        assert time.monotonic() < deadline, "the session's end was never logged"
        time.sleep(0.05)
    assert re.search(f"session ended session_id={session} tid=[A-Za-z0-9_-]{{12}} .*code=client_gone", log)
    assert '"WebSocket /v3/realtime" [accepted]' in log
    # websockets' own `connection open`, which said again what the line above says, is not printed.
    assert "connection open" not in log


# Failure-matrix gaps: what a careless edit of the checks would let through -------------------


def redeemed(edge: Edge, ticket: str, **options: Any) -> None:
    """The ticket opens a session (retrying while the one-session cap still counts the last one)."""
    deadline = time.monotonic() + 10
    while True:  # the server notices a close asynchronously
        try:
            with open_ws(edge, ticket=ticket, **options):
                return
        except InvalidStatus as exc:
            assert exc.response.status_code == 429, exc.response.status_code
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", "eddsa", "EdDSA "])
def test_a_header_alg_other_than_eddsa_is_refused_even_with_a_valid_eddsa_signature(
    edge: Edge, alg: str, sealed: bool
) -> None:
    """Signed by the real key over the real header: only the header's `alg` is wrong. A verifier
    that trusted a valid signature whatever `alg` said would open a session here."""
    now = int(time.time())
    ticket = edge.forge(iat=now, exp=now + 60, alg=alg)
    if sealed:
        sealer = SealKeySet.load(edge.keys_dir / SEAL_FILE).sealer
        assert sealer is not None
        ticket = jwe.seal(ticket.encode(), sealer)
        edge.secrets.append(ticket)
    status, body, headers = denial(edge, ticket=ticket)
    assert (status, body["error"]["code"]) == (401, "invalid_ticket")
    assert "EdDSA" in body["error"]["message"]
    # The same forgery with the right `alg` opens a session: the signature itself was good.
    redeemed(edge, edge.forge(iat=now, exp=now + 60))


LOOK_ALIKE_ORIGINS = [
    "https://app.example.evil.net",
    "https://app.example@evil.net",
    "https://app.examplex",
    "https://app.exampl",
    "https://evil.net/https://app.example",
    "https://evil.net?https://app.example",
    "https://APP.example",
    "HTTPS://app.example",
    "https://app.example:443",
    "https://app.example.",
    "http://app.example",
    "wss://app.example",
    "null",
]


@pytest.mark.parametrize("origin", LOOK_ALIKE_ORIGINS)
def test_look_alike_origins_are_refused_and_leave_the_ticket_redeemable(edge: Edge, origin: str) -> None:
    """The allow-list compares exact serialised origins (RFC 6454 section 6.2: lower-case scheme
    and host, no default port, as every browser sends them): no prefix, suffix or case variant."""
    ticket = edge.mint()
    status, body, _ = denial(edge, ticket=ticket, origin=origin)
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    redeemed(edge, ticket, origin=ORIGIN_OK)


def stored_key(edge: Edge, plain: str, *, kind: str) -> None:
    """Store `plain` (whatever its prefix) as a key of `kind` in the running edge's key file."""
    path = edge.keys_dir / "api_keys.json"
    entry = ApiKey(f"key_{kind}_{plain[-6:]}", digest(plain), PROJECT, kind, int(time.time()))  # type: ignore[arg-type]
    with locked(path.parent):
        write_keys(path, [*read_keys(path), entry])
    edge.secrets.append(plain)


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [("oprk-", "management"), ("opmak-", "management"), ("opmak-", "runtime")],
    ids=["management-kind-runtime-prefix", "management-key", "runtime-kind-management-prefix"],
)
def test_management_keys_are_refused_at_the_mint_and_the_edge(edge: Edge, prefix: str, kind: str) -> None:
    plain = prefix + base64.urlsafe_b64encode(Ed25519PrivateKey.generate().sign(b"k")[:32]).decode().rstrip(
        "="
    )
    stored_key(edge, plain, kind=kind)
    minted = httpx.post(
        edge.service.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {plain}"},
        json={},
        timeout=10,
    )
    assert (minted.status_code, minted.json()["error"]["code"]) == (401, "invalid_credentials")
    assert "management" in minted.json()["error"]["message"]
    assert minted.headers["www-authenticate"].lower().startswith("bearer")
    status, body, _ = denial(edge, headers={"Authorization": f"Bearer {plain}"})
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    assert "management" in body["error"]["message"] and plain not in json.dumps(body)
