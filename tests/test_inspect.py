"""`python -m app.tickets inspect` (`make inspect TICKET=...`): each verdict, its exit status, and no key
material."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.tickets.apikeys import create_key
from app.tickets.base64url import b64url
from app.tickets.claims import tid
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE, SealKeySet
from app.tickets.ticket import issue
from tests.redis_server import RedisServer
from tests.servers import ROOT, ServiceProcess

PROJECT = "proj_inspect"
CONFIG = {"model": "openai/gpt-realtime-2", "voice": "marin"}


def inspect(ticket: str, env: dict[str, str]) -> tuple[int, str]:
    """Runs the command as an operator would, the ticket on stdin; (exit status, output)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.tickets", "inspect"],
        cwd=ROOT,
        env={**clean, **env},
        input=ticket,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def keys(tmp_path: Path, name: str = "keys") -> Path:
    keys_dir = tmp_path / name
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    return keys_dir


def ticket(keys_dir: Path, *, now: float | None = None, ttl: int = 60, sealed: bool = True) -> str:
    signer = KeySet.load(keys_dir).signer
    assert signer is not None
    return issue(
        signer,
        project=PROJECT,
        config=CONFIG,
        locked=("voice", "instructions"),
        ttl=ttl,
        now=time.time() if now is None else now,
        issuer="opper-realtime",
        audience="opper-realtime",
        max_bytes=6144,
        seal=SealKeySet.load(keys_dir / SEAL_FILE).sealer if sealed else None,
    ).token


def field(output: str, label: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith(label + ":"))
    return line.split(":", 1)[1].strip()


def assert_no_key_material(output: str, keys_dir: Path, token: str) -> None:
    for key in SealKeySet.load(keys_dir / SEAL_FILE).keys:
        assert b64url(key.secret) not in output
    for pem in keys_dir.glob("*.pem"):
        body = "".join(pem.read_text().splitlines()[1:-1])
        assert body[16:40] not in output
    assert token not in output
    assert token.split(".")[-1] not in output  # neither the tag nor the signature
    if token.count(".") == 4:
        assert token.split(".")[3] not in output  # nor the ciphertext


def test_a_valid_sealed_ticket_shows_its_headers_claims_binding_and_expiry(tmp_path: Path) -> None:
    keys_dir = keys(tmp_path)
    token = ticket(keys_dir)
    status, output = inspect(token, {"REALTIME_KEYS_DIR": str(keys_dir)})
    assert status == 0, output
    assert field(output, "verdict") == "valid"
    seal_header = json.loads(field(output, "seal header"))
    assert seal_header["alg"] == "A256KW" and seal_header["enc"] == "A256GCM"
    signer = KeySet.load(keys_dir).signer
    assert signer is not None
    assert json.loads(field(output, "header")) == {
        "alg": "EdDSA",
        "kid": signer.kid,
        "typ": "opper-ticket+jwt",
    }
    claims = json.loads(field(output, "claims"))
    assert claims["sub"] == PROJECT and claims["exp"] - claims["iat"] == 60
    assert json.loads(field(output, "bound config")) == CONFIG
    assert json.loads(field(output, "locked")) == ["voice", "instructions"]
    assert field(output, "expires").endswith("leeway 5 s)") and "(in " in field(output, "expires")
    assert field(output, "tid") == tid(claims["jti"])  # the id the service's log lines carry
    assert "memory://" in field(output, "replay store")
    assert_no_key_material(output, keys_dir, token)


def test_expired(tmp_path: Path) -> None:
    keys_dir = keys(tmp_path)
    token = ticket(keys_dir, now=time.time() - 120, ttl=60)
    status, output = inspect(token, {"REALTIME_KEYS_DIR": str(keys_dir)})
    assert status == 1 and field(output, "verdict").startswith("expired")
    assert " ago;" in field(output, "expires")
    assert_no_key_material(output, keys_dir, token)


def test_unknown_signing_key(tmp_path: Path) -> None:
    stranger = keys(tmp_path, "stranger")
    token = ticket(stranger, sealed=False)
    status, output = inspect(token, {"REALTIME_KEYS_DIR": str(keys(tmp_path))})
    assert status == 1 and field(output, "verdict").startswith("unknown_key (signing key")
    # What it could read is still shown, marked as such.
    assert json.loads(field(output, "claims"))["sub"] == PROJECT
    assert field(output, "bound config").endswith("(not verified)")


def test_unknown_seal_key(tmp_path: Path) -> None:
    stranger = keys(tmp_path, "stranger")
    token = ticket(stranger)
    status, output = inspect(token, {"REALTIME_KEYS_DIR": str(keys(tmp_path))})
    assert status == 1 and field(output, "verdict").startswith("unknown_key (seal key")
    assert "not in" in field(output, "sealed by")
    assert_no_key_material(output, stranger, token)


@pytest.mark.parametrize("damage", ["signature", "garbage", "empty-ish"])
def test_invalid_ticket(tmp_path: Path, damage: str) -> None:
    keys_dir = keys(tmp_path)
    token = ticket(keys_dir, sealed=False)
    if damage == "signature":
        head, payload, signature = token.split(".")
        token = f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    elif damage == "garbage":
        token = "not a ticket at all"
    else:
        token = "..."
    status, output = inspect(token, {"REALTIME_KEYS_DIR": str(keys_dir)})
    assert status == 1 and field(output, "verdict").startswith("invalid_ticket"), output
    assert "Traceback" not in output


def test_used_when_the_configured_redis_store_says_so(tmp_path: Path) -> None:
    keys_dir = keys(tmp_path)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    with RedisServer(log_path=tmp_path / "redis.log") as redis_server:
        env = {
            "REALTIME_KEYS_DIR": str(keys_dir),
            "REALTIME_REPLAY_URL": redis_server.url,
            "REALTIME_REPLAY_PREFIX": "inspect-test:",
        }
        with ServiceProcess(env=env, log_path=tmp_path / "service.log") as service:
            minted = httpx.post(
                service.url + "/v3/realtime-sessions",
                headers={"Authorization": f"Bearer {api_key}"},
                json={},
                timeout=10,
            )
            token = minted.json()["client_secret"]
            status, output = inspect(token, env)
            assert status == 0 and field(output, "replay store") == "unused", output
            with connect(
                service.ws_url, subprotocols=[Subprotocol("opper-ticket." + token)], open_timeout=10
            ):
                pass
        status, output = inspect(token, env)
    assert status == 1 and field(output, "verdict") == "used" and field(output, "replay store") == "used"


def test_verifies_with_the_minters_jwks_on_an_edge(tmp_path: Path) -> None:
    minter_keys = keys(tmp_path, "minter")
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(minter_keys)}, log_path=tmp_path / "m.log") as minter:
        edge = {
            "REALTIME_KEYS_DIR": str(tmp_path / "nothing-here"),
            "REALTIME_JWKS_URL": minter.url + "/.well-known/jwks.json",
            "REALTIME_SEAL_KEYS_FILE": str(minter_keys / SEAL_FILE),
        }
        token = ticket(minter_keys)
        status, output = inspect(token, edge)
        assert status == 0 and field(output, "verdict") == "valid", output
        status, output = inspect(ticket(keys(tmp_path, "stranger"), sealed=False), edge)
        assert status == 1 and field(output, "verdict").startswith("unknown_key")
        assert minter.url in field(output, "verdict")


def test_make_inspect_takes_the_ticket_from_the_command_line(tmp_path: Path) -> None:
    keys_dir = keys(tmp_path)
    token = ticket(keys_dir)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.tickets", "inspect", token],
        cwd=ROOT,
        env={**clean, "REALTIME_KEYS_DIR": str(keys_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and field(done.stdout, "verdict") == "valid"
    assert (
        "app.tickets inspect" in (ROOT / "Makefile").read_text().split("\ninspect:", 1)[1].split("\n\n", 1)[0]
    )
