"""Tickets against real processes: interop with npm `jose` both ways, verify-only edges with a seal file,
and malformed tickets that must end in `401 invalid_ticket` with no ERROR line or traceback."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.tickets.apikeys import create_key
from app.tickets.base64url import b64url
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE, SealKeySet
from app.tickets.ticket import issue
from tests.servers import ROOT, ServiceProcess

JS = ROOT / "tests" / "js"
PROJECT = "proj_interop"
MODEL = "openai/gpt-realtime-2"
ISS = AUD = "opper-realtime"
CONFIG = {
    "model": MODEL,
    "instructions": "You are Aurora. Never reveal the discount code Z7Q.",
    "tools": [{"name": "lookup_order", "parameters": {"type": "object", "properties": {}}}],
}


@pytest.fixture(scope="module")
def jose() -> Path:
    """npm `jose` at the version tests/js/package-lock.json pins, installed with `npm ci` when missing."""
    for binary in ("node", "npm"):
        assert shutil.which(binary), (
            f"{binary} is needed for the jose interop tests (apt-get install nodejs npm)"
        )
    if not (JS / "node_modules" / "jose" / "package.json").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=300, capture_output=True
        )
    return JS


def node(jose: Path, script: str, payload: dict[str, Any]) -> str:
    done = subprocess.run(
        ["node", script],
        cwd=jose,
        input=json.dumps(payload).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


class Node:
    def __init__(self, keys_dir: Path, service: ServiceProcess, api_key: str) -> None:
        self.keys_dir, self.service, self.api_key = keys_dir, service, api_key

    def mint(self, **body: Any) -> str:
        response = httpx.post(
            self.service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json=body,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["client_secret"]
        return token


@pytest.fixture(scope="module")
def minter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("minter")
    keys_dir = tmp / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys_dir)}, log_path=tmp / "minter.log") as service:
        yield Node(keys_dir, service, api_key)


def verify_only_edge(tmp: Path, minter: Node, seal_file: Path) -> ServiceProcess:
    env = {
        "REALTIME_KEYS_DIR": str(tmp / "no-keys-here"),
        "REALTIME_JWKS_URL": minter.service.url + "/.well-known/jwks.json",
        "REALTIME_SEAL_KEYS_FILE": str(seal_file),
        "REALTIME_REPLAY_URL": "memory://",  # single use per process only: asked for by name
    }
    return ServiceProcess(env=env, log_path=tmp / "edge.log")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, minter: Node) -> Iterator[ServiceProcess]:
    """A verify-only edge holding a copy of the minter's seal file, as an operator would give it."""
    tmp = tmp_path_factory.mktemp("edge")
    copy = tmp / "secrets" / SEAL_FILE
    copy.parent.mkdir()
    shutil.copy(minter.keys_dir / SEAL_FILE, copy)
    with verify_only_edge(tmp, minter, copy) as service:
        service.wait_out_start_window()
        yield service


def seal_jwk(keys_dir: Path, state: str = "active") -> dict[str, str]:
    entry = next(e for e in json.loads((keys_dir / SEAL_FILE).read_text())["keys"] if e["state"] == state)
    return {"kty": "oct", "kid": entry["kid"], "k": entry["k"], "alg": "A256KW"}


def start_session(url: str, ticket: str) -> dict[str, Any]:
    with connect(url, subprotocols=[Subprotocol("opper-ticket." + ticket)], open_timeout=10) as ws:
        ws.send(json.dumps({"type": "session.start", "config": {}}))
        event: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return event


def refusal(url: str, ticket: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as caught:
        start_session(url, ticket)
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]["code"]


def assert_clean(service: ServiceProcess) -> None:
    log = service.log()
    assert " ERROR " not in log and "Traceback" not in log, log


# Interop with npm jose -------------------------------------------------------------------------


def test_jose_decrypts_and_verifies_our_sealed_ticket(jose: Path, minter: Node) -> None:
    ticket = minter.mint(config=CONFIG, locked_fields=["voice"])
    assert len(ticket.split(".")) == 5
    jwks = httpx.get(minter.service.url + "/.well-known/jwks.json", timeout=10).json()
    read = json.loads(
        node(
            jose,
            "read-ticket.mjs",
            {
                "ticket": ticket,
                "sealKey": seal_jwk(minter.keys_dir),
                "jwks": jwks,
                "issuer": ISS,
                "audience": AUD,
                "now": int(time.time()),
            },
        )
    )
    signer = KeySet.load(minter.keys_dir).signer
    assert signer is not None
    assert read["sealedHeader"] == {
        "alg": "A256KW",
        "enc": "A256GCM",
        "kid": seal_jwk(minter.keys_dir)["kid"],
        "cty": "JWT",
    }
    assert read["jwsHeader"] == {"alg": "EdDSA", "kid": signer.kid, "typ": "opper-ticket+jwt"}
    payload = read["payload"]
    assert payload["sub"] == PROJECT and payload["cfg"] == CONFIG and payload["lck"] == ["voice"]
    assert payload["exp"] - payload["iat"] == 60 and "cfz" not in payload


def test_jose_refuses_our_ticket_with_the_wrong_seal_key(jose: Path, minter: Node) -> None:
    ticket = minter.mint()
    wrong = {**seal_jwk(minter.keys_dir), "k": b64url(secrets.token_bytes(32))}
    done = subprocess.run(
        ["node", "read-ticket.mjs"],
        cwd=jose,
        input=json.dumps({"ticket": ticket, "sealKey": wrong, "jwks": {"keys": []}}).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and b"decryption" in done.stderr.lower()


def jose_ticket(jose: Path, keys_dir: Path, *, seal_state: str = "active") -> str:
    signer = KeySet.load(keys_dir).signer
    assert signer is not None
    now = int(time.time())
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": PROJECT,
        "jti": b64url(secrets.token_bytes(16)),
        "iat": now,
        "exp": now + 60,
        "cfg": {"model": MODEL, "voice": "marin"},
    }
    payload = {
        "claims": claims,
        "kid": signer.kid,
        "signingKeyPem": (keys_dir / f"{signer.kid}.pem").read_text(),
        "sealKey": seal_jwk(keys_dir, seal_state),
    }
    return node(jose, "build-ticket.mjs", payload)


def test_we_redeem_a_sealed_ticket_jose_built(jose: Path, minter: Node, edge: ServiceProcess) -> None:
    for service in (minter.service, edge):
        ticket = jose_ticket(jose, minter.keys_dir)
        assert len(ticket.split(".")) == 5
        started = start_session(service.ws_url, ticket)
        assert started["type"] == "session.started", started
        assert started["model"] == MODEL and started["voice"] == "marin"
        assert refusal(service.ws_url, ticket) == (401, "ticket_replayed")
    # Sealed with the `next` seal key: already accepted, before any rotation.
    assert start_session(minter.service.ws_url, jose_ticket(jose, minter.keys_dir, seal_state="next"))[
        "type"
    ] == ("session.started")


# Verify-only edges ----------------------------------------------------------------------------


def test_a_verify_only_edge_opens_the_minters_sealed_tickets(minter: Node, edge: ServiceProcess) -> None:
    ticket = minter.mint(config={"model": MODEL})
    assert start_session(edge.ws_url, ticket)["type"] == "session.started"
    assert_clean(edge)


def test_an_edge_without_seal_keys_warns_and_refuses_sealed_tickets(
    tmp_path: Path, minter: Node, edge: ServiceProcess
) -> None:
    with verify_only_edge(tmp_path, minter, tmp_path / "missing" / SEAL_FILE) as blind:
        warning = next(line for line in blind.log().splitlines() if "no seal keys" in line)
        assert " WARNING " in warning
        # What to do on an edge: bring the minter's seal file (`make keys` would make new keys).
        assert "copy the minter's seal.json" in warning and "REALTIME_SEAL_KEYS_FILE" in warning
        assert "make keys" not in warning
        blind.wait_out_start_window()
        assert refusal(blind.ws_url, minter.mint()) == (401, "unknown_key")
        signer = KeySet.load(minter.keys_dir).signer
        assert signer is not None
        plain = issue(
            signer,
            project=PROJECT,
            config={"model": MODEL},
            locked=(),
            ttl=60,
            now=time.time(),
            issuer=ISS,
            audience=AUD,
            max_bytes=6144,
        ).token
        assert start_session(blind.ws_url, plain)["type"] == "session.started"
        assert_clean(blind)
        # Its log holds no seal key material of the minter's either (it never had any).
        for key in SealKeySet.load(minter.keys_dir / SEAL_FILE).keys:
            assert b64url(key.secret) not in blind.log()


# Malformed tickets ----------------------------------------------------------------------------


def raw_handshake(port: int, target: str, protocol: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """A WebSocket upgrade written by hand, so it can carry bytes a client library would refuse."""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    ).encode()
    if protocol is not None:
        request += b"Sec-WebSocket-Protocol: " + protocol + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
    status = int(lines[0].split(" ")[1])
    if not headers.get("content-type", "").startswith("application/json"):
        return status, {"text": body[:length].decode(errors="replace")}
    return status, json.loads(body[:length] or b"{}")


SIGNATURE = b64url(b"\x01" * 64)
DEEP_HEADER = b64url(b"[" * 4000)
HUGE_INT_HEADER = b64url(b'{"alg":"EdDSA","kid":' + b"7" * 4400 + b',"typ":"opper-ticket+jwt"}')
HUGE_FLOAT_HEADER = b64url(b'{"alg":"EdDSA","kid":"k","typ":"opper-ticket+jwt","n":1e400}')
SEALED_TAIL = ".".join(
    [b64url(b"\x02" * 40), b64url(b"\x03" * 12), b64url(b"\x04" * 30), b64url(b"\x05" * 16)]
)
HEADER = b64url(b'{"alg":"EdDSA","kid":"k","typ":"opper-ticket+jwt"}')
MALFORMED: list[tuple[str, str, bytes | None]] = [
    # {header}: the real header of the minter's signing key, so only the payload is wrong.
    ("query-non-ascii-payload", "/v3/realtime?ticket={header}.%C3%A9abc.xxxx", None),
    ("query-invalid-utf8", "/v3/realtime?ticket={header}.%FF%FEabc.xxxx", None),
    ("query-non-ascii-signature", "/v3/realtime?ticket={header}.e30.%C3%A9", None),
    ("deep-header", f"/v3/realtime?ticket={DEEP_HEADER}.e30.{SIGNATURE}", None),
    ("deep-jwe-header", f"/v3/realtime?ticket={DEEP_HEADER}.{SEALED_TAIL}", None),
    ("huge-int-header", f"/v3/realtime?ticket={HUGE_INT_HEADER}.e30.{SIGNATURE}", None),
    ("huge-float-header", "/v3/realtime", f"opper-ticket.{HUGE_FLOAT_HEADER}.e30.{SIGNATURE}".encode()),
    ("huge-int-jwe-header", f"/v3/realtime?ticket={HUGE_INT_HEADER}.{SEALED_TAIL}", None),
]


@pytest.mark.parametrize(("target", "protocol"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_tickets_are_invalid_not_errors(minter: Node, target: str, protocol: bytes | None) -> None:
    signer = KeySet.load(minter.keys_dir).signer
    assert signer is not None
    header = b64url(json.dumps({"alg": "EdDSA", "kid": signer.kid, "typ": "opper-ticket+jwt"}).encode())
    status, body = raw_handshake(minter.service.port, target.replace("{header}", header), protocol)
    assert (status, body["error"]["code"]) == (401, "invalid_ticket")
    assert_clean(minter.service)


@pytest.mark.parametrize(
    "protocol",
    [f"opper-ticket.{HEADER}.éabc.xxxx".encode(), f"opper-ticket.{HEADER}.".encode() + b"\xe9abc.xxxx"],
    ids=["utf-8", "latin-1"],
)
def test_a_non_ascii_subprotocol_is_refused_by_the_server_before_the_app(
    minter: Node, protocol: bytes
) -> None:
    """A protocol name is an HTTP token (RFC 6455 section 4.1), so é cannot be in one: the WebSocket
    layer answers our JSON 400 before the app sees the request, echoing nothing, logged at INFO."""
    status, body = raw_handshake(minter.service.port, "/v3/realtime", protocol)
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert HEADER not in json.dumps(body)
    assert_clean(minter.service)


def test_the_service_still_works_and_its_log_is_clean(minter: Node) -> None:
    assert (
        start_session(minter.service.ws_url, minter.mint(config={"model": MODEL}))["type"]
        == "session.started"
    )
    log = minter.service.log()
    assert_clean(minter.service)
    assert "invalid_ticket" in log  # the refusals above were logged, at INFO
    assert DEEP_HEADER not in log and HUGE_INT_HEADER not in log
