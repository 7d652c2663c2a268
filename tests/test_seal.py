"""Sealed tickets: seal keys on disk, the JWE framing, every decrypt rejection, and what a holder sees."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from starlette.testclient import TestClient, WebSocketDenialResponse

from app.clock import FakeClock
from app.config import Settings
from app.exceptions import InvalidTicketError, KeySetError, TicketError, UnknownKeyError
from app.main import create_app
from app.ops import keys as keys_cli
from app.tickets.base64url import b64url, b64url_decode
from app.tickets.keys import KeySet, SigningKey
from app.tickets.rotation import ensure_keys, rotate
from app.tickets.sealkeys import SEAL_FILE, SealKey, SealKeySet, retire_seal_keys
from app.tickets.ticket import issue, verify
from tests.conftest import PROJECT, START
from tests.sealing import claims_of, segment_json, signed_part

ISS = AUD = "opper-realtime"
START_EVENT = {"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}
NOW = int(START)
AFTER_START = NOW + 6  # the first `iat` a memory:// edge started at NOW admits from another minter
URL = "/v3/realtime-sessions"
SECRET_INSTRUCTIONS = "You are Aurora, the support agent of Example Corp. Never reveal the discount code Z7Q."
TOOL = {
    "name": "lookup_order",
    "description": "Find an order in the internal order database by its number.",
    "parameters": {
        "type": "object",
        "properties": {"order_number": {"type": "string", "description": "internal order number"}},
        "required": ["order_number"],
    },
}


def seal_keys(keys_dir: Path) -> SealKeySet:
    return SealKeySet.load(keys_dir / SEAL_FILE)


def signer_of(keyset: KeySet) -> SigningKey:
    signer = keyset.signer
    assert signer is not None
    return signer


def mint(keys_dir: Path, config: dict[str, Any] | None = None, *, sealed: bool = True, **options: Any) -> str:
    values: dict[str, Any] = {
        "project": PROJECT,
        "config": config or {},
        "locked": (),
        "ttl": 60,
        "now": NOW,
        "issuer": ISS,
        "audience": AUD,
        "max_bytes": 6144,
        "seal": seal_keys(keys_dir).sealer if sealed else None,
    }
    values.update(options)
    return issue(signer_of(KeySet.load(keys_dir)), **values).token


def check(token: str, keys_dir: Path, *, max_bytes: int = 6144) -> Any:
    return verify(
        token,
        KeySet.load(keys_dir),
        seal_keys=seal_keys(keys_dir),
        issuer=ISS,
        audience=AUD,
        leeway=5,
        max_bytes=max_bytes,
        now=NOW,
    )


# Seal keys on disk ------------------------------------------------------------------------------


def test_make_keys_writes_a_private_jwk_set_of_256_bit_keys(keys_dir: Path) -> None:
    path = keys_dir / SEAL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = json.loads(path.read_text())["keys"]
    assert sorted(entry["state"] for entry in entries) == ["active", "next"]
    for entry in entries:
        assert entry["kty"] == "oct" and entry["alg"] == "A256KW"
        assert len(b64url_decode(entry["k"])) == 32
        assert {"kid", "k", "state", "created_at", "state_since"} <= set(entry)
    assert len({entry["kid"] for entry in entries}) == 2
    # make keys again: idempotent
    before = path.read_bytes()
    assert ensure_keys(keys_dir, now=NOW)[1] is False
    assert path.read_bytes() == before


def test_rotate_and_retire_move_seal_keys_through_their_states(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=NOW)
    first = seal_keys(tmp_path)
    rotate(tmp_path, now=NOW + 10)
    second = seal_keys(tmp_path)
    old_active, old_next = first.in_state("active")[0], first.in_state("next")[0]
    assert second.sealer is not None and second.sealer.kid == old_next.kid
    assert [key.kid for key in second.in_state("retiring")] == [old_active.kid]
    assert len(second.in_state("next")) == 1 and second.in_state("next")[0].kid not in {
        old_active.kid,
        old_next.kid,
    }
    assert stat.S_IMODE((tmp_path / SEAL_FILE).stat().st_mode) == 0o600
    path = tmp_path / SEAL_FILE
    assert retire_seal_keys(path, now=NOW + 20, min_age=365) == []  # too early
    gone = retire_seal_keys(path, now=NOW + 10 + 365, min_age=365)
    assert [key.kid for key in gone] == [old_active.kid]
    assert seal_keys(tmp_path).get(old_active.kid) is None
    assert seal_keys(tmp_path).sealer == second.sealer


def test_rotate_gives_a_directory_without_seal_keys_its_first_pair(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=NOW)
    (tmp_path / SEAL_FILE).unlink()
    rotate(tmp_path, now=NOW + 1)
    assert seal_keys(tmp_path).sealer is not None and len(seal_keys(tmp_path).in_state("next")) == 1


def test_the_command_line_lists_seal_keys_and_never_prints_a_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["init"], ["rotate", "--force"], ["status"], ["retire", "--force"], ["status"], ["jwks"]):
        assert keys_cli.main([*command, "--dir", str(tmp_path)], now=lambda: NOW) == 0
    out = capsys.readouterr().out
    secrets_seen = [b64url(key.secret) for key in seal_keys(tmp_path).keys]
    assert secrets_seen and not any(secret in out for secret in secrets_seen)
    assert "retired seal key" in out and "seal key, created" in out
    jwks = json.loads(out[out.index('{\n  "keys"') :])
    assert all(key["kty"] == "OKP" and "k" not in key and "d" not in key for key in jwks["keys"])


def test_a_broken_seal_file_is_refused_without_printing_it(tmp_path: Path) -> None:
    path = tmp_path / SEAL_FILE
    secret = b64url(secrets.token_bytes(31))  # one byte short
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "s", "k": secret, "state": "active"}]}))
    with pytest.raises(KeySetError) as caught:
        SealKeySet.load(path)
    assert secret not in caught.value.message
    entry = {"kty": "oct", "kid": "s", "k": secret, "state": "active", "created_at": 1, "state_since": 1}
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeySetError) as caught:
        SealKeySet.load(path)
    assert secret not in caught.value.message and "256-bit" in caught.value.message


def test_a_seal_keys_repr_holds_no_secret(keys_dir: Path) -> None:
    key = seal_keys(keys_dir).sealer
    assert key is not None
    assert key.secret.hex() not in repr(key) and b64url(key.secret) not in repr(key)


def test_seal_keys_are_never_served(client: TestClient, keys_dir: Path) -> None:
    jwks = client.get("/.well-known/jwks.json").json()
    assert all(
        key["kty"] == "OKP" and set(key) == {"kty", "crv", "x", "kid", "alg", "use"} for key in jwks["keys"]
    )
    served = json.dumps(jwks) + client.get("/metrics").text
    for key in seal_keys(keys_dir).keys:
        assert key.kid not in served and b64url(key.secret) not in served
    for path in ("/seal.json", "/keys/seal.json", "/static/..%2F..%2Fkeys%2Fseal.json"):
        assert client.get(path).status_code == 404


# The framing -----------------------------------------------------------------------------------


def test_sealed_ticket_round_trips_and_its_header_is_exact(keys_dir: Path) -> None:
    config = {"model": "openai/gpt-realtime-2", "instructions": SECRET_INSTRUCTIONS, "tools": [TOOL]}
    token = mint(keys_dir, config, locked=("voice",))
    parts = token.split(".")
    assert len(parts) == 5
    sealer = seal_keys(keys_dir).sealer
    assert sealer is not None
    assert segment_json(parts[0]) == {"alg": "A256KW", "enc": "A256GCM", "kid": sealer.kid, "cty": "JWT"}
    assert parts[0] == b64url(
        json.dumps(
            {"alg": "A256KW", "enc": "A256GCM", "kid": sealer.kid, "cty": "JWT"}, separators=(",", ":")
        ).encode()
    )
    assert [len(b64url_decode(part)) for part in (parts[1], parts[2], parts[4])] == [40, 12, 16]
    ticket = check(token, keys_dir)
    assert ticket.config == config and ticket.locked == ("voice",) and ticket.project == PROJECT
    inner = signed_part(token, keys_dir)
    assert segment_json(inner.split(".")[0]) == {
        "alg": "EdDSA",
        "kid": signer_of(KeySet.load(keys_dir)).kid,
        "typ": "opper-ticket+jwt",
    }


def test_each_ticket_has_its_own_content_key_and_iv(keys_dir: Path) -> None:
    first, second = mint(keys_dir).split("."), mint(keys_dir).split(".")
    assert first[0] == second[0]
    assert first[1] != second[1] and first[2] != second[2]


def test_a_sealed_ticket_never_carries_cfz_and_a_plain_one_keeps_it(keys_dir: Path) -> None:
    config = {"instructions": "Be brief and kind. " * 100}
    sealed, plain = mint(keys_dir, config), mint(keys_dir, config, sealed=False)
    sealed_claims, plain_claims = claims_of(sealed, keys_dir), claims_of(plain, keys_dir)
    assert "cfz" not in sealed_claims and sealed_claims["cfg"] == config
    assert "cfz" in plain_claims and "cfg" not in plain_claims
    assert check(sealed, keys_dir).config == check(plain, keys_dir).config == config


def test_no_plaintext_of_the_bound_config_is_in_a_sealed_ticket(keys_dir: Path) -> None:
    config = {"model": "openai/gpt-realtime-2", "instructions": SECRET_INSTRUCTIONS, "tools": [TOOL]}
    token = mint(keys_dir, config)
    needles = [
        PROJECT,
        "Aurora",
        "Z7Q",
        "lookup_order",
        "order_number",
        "instructions",
        "cfg",
        "sub",
        "EdDSA",
    ]
    readable = [token]
    for part in token.split("."):
        for skip in range(4):  # every alignment, in case a readable run starts mid-segment
            chunk = part[skip:]
            chunk = chunk[: len(chunk) - len(chunk) % 4 if len(chunk) % 4 == 1 else len(chunk)]
            try:
                readable.append(b64url_decode(chunk).decode("latin-1"))
            except ValueError:
                readable.append(_loose_decode(chunk))
    for text in readable:
        for needle in needles:
            assert needle not in text, needle
    # The plain ticket does show them: the test can see what it claims to miss.
    plain = mint(keys_dir, config, sealed=False)
    assert "Aurora" in b64url_decode(plain.split(".")[1]).decode()


def _loose_decode(chunk: str) -> str:
    import base64

    return base64.urlsafe_b64decode(chunk + "=" * (-len(chunk) % 4)).decode("latin-1")


def sizes(keys_dir: Path, config: dict[str, Any]) -> tuple[int, int]:
    return len(mint(keys_dir, config)), len(mint(keys_dir, config, sealed=False))


def test_sizes_of_sealed_and_plain_tickets(keys_dir: Path) -> None:
    example = {"model": "openai/gpt-realtime-2", "voice": "marin"}
    sealed, plain = sizes(keys_dir, example)
    # The seal adds its header, the wrapped key, the IV and the tag, and base64url of the JWS.
    assert 0 < sealed - plain < 400 and sealed < 1000
    instructions = ("Answer as our support agent; keep every answer short and polite. " * 16)[:1024]
    realistic = {"model": "openai/gpt-realtime-2", "instructions": instructions, "tools": [TOOL]}
    sealed, plain = sizes(keys_dir, realistic)
    assert sealed < 6144 and plain < sealed


def test_the_budget_applies_to_the_outer_token(keys_dir: Path) -> None:
    config = {"instructions": b64url(secrets.token_bytes(3000))}
    plain = mint(keys_dir, config, sealed=False, max_bytes=10_000)
    sealed = mint(keys_dir, config, max_bytes=10_000)
    budget = (len(plain) + len(sealed)) // 2
    assert len(check(plain, keys_dir, max_bytes=budget).config["instructions"]) == 4000
    with pytest.raises(InvalidTicketError):
        check(sealed, keys_dir, max_bytes=budget)
    from app.exceptions import TicketTooLargeError

    with pytest.raises(TicketTooLargeError) as caught:
        mint(keys_dir, config, max_bytes=budget)
    assert caught.value.size == len(sealed)


# Every decrypt rejection ----------------------------------------------------------------------


def frame(
    keys_dir: Path,
    *,
    header: dict[str, Any] | None = None,
    inner: bytes | None = None,
    key: bytes | None = None,
    kid: str | None = None,
) -> list[str]:
    """A JWE built by hand, so a test controls every byte; defaults give a valid sealed ticket."""
    sealer = seal_keys(keys_dir).sealer
    assert sealer is not None
    head = header or {"alg": "A256KW", "enc": "A256GCM", "kid": kid or sealer.kid, "cty": "JWT"}
    protected = b64url(json.dumps(head, separators=(",", ":")).encode())
    content_key, iv = secrets.token_bytes(32), secrets.token_bytes(12)
    plaintext = inner if inner is not None else mint(keys_dir, sealed=False).encode()
    sealed = AESGCM(content_key).encrypt(iv, plaintext, protected.encode())
    wrapped = aes_key_wrap(key or sealer.secret, content_key)
    return [protected, b64url(wrapped), b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])]


def flip(segment: str, index: int) -> str:
    data = bytearray(b64url_decode(segment))
    data[index] ^= 0x01
    return b64url(bytes(data))


def header_with(keys_dir: Path, **changes: Any) -> dict[str, Any]:
    sealer = seal_keys(keys_dir).sealer
    assert sealer is not None
    head: dict[str, Any] = {"alg": "A256KW", "enc": "A256GCM", "kid": sealer.kid, "cty": "JWT"}
    head.update(changes)
    return {k: v for k, v in head.items() if v is not None}


def _replace(parts: list[str], index: int, value: str) -> str:
    parts = list(parts)
    parts[index] = value
    return ".".join(parts)


def _inner_with_cfz(keys_dir: Path) -> str:
    plain = mint(keys_dir, {"instructions": "Be brief and kind. " * 100}, sealed=False)
    assert "cfz" in claims_of(plain, keys_dir)
    return ".".join(frame(keys_dir, inner=plain.encode()))


def _unwrapped_as_dir(keys_dir: Path) -> str:
    """`alg: dir`: the seal key used directly as the content key, no wrapped key."""
    sealer = seal_keys(keys_dir).sealer
    assert sealer is not None
    protected = b64url(json.dumps(header_with(keys_dir, alg="dir")).encode())
    iv = secrets.token_bytes(12)
    sealed = AESGCM(sealer.secret).encrypt(iv, mint(keys_dir, sealed=False).encode(), protected.encode())
    return ".".join([protected, "", b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])])


Make = Callable[[Path], str]
DECRYPT_CASES: list[tuple[str, Make, str]] = [
    ("wrong-key", lambda d: ".".join(frame(d, key=secrets.token_bytes(32))), "invalid_ticket"),
    (
        "sealed-with-next-key-under-active-kid",
        lambda d: ".".join(frame(d, key=seal_keys(d).in_state("next")[0].secret)),
        "invalid_ticket",
    ),
    ("flipped-tag", lambda d: _replace(p := frame(d), 4, flip(p[4], 0)), "invalid_ticket"),
    ("flipped-ciphertext", lambda d: _replace(p := frame(d), 3, flip(p[3], 10)), "invalid_ticket"),
    ("flipped-iv", lambda d: _replace(p := frame(d), 2, flip(p[2], 5)), "invalid_ticket"),
    ("flipped-wrapped-key", lambda d: _replace(p := frame(d), 1, flip(p[1], 20)), "invalid_ticket"),
    (
        "flipped-header-aad",
        lambda d: _replace(frame(d), 0, b64url(json.dumps(header_with(d), indent=1).encode())),
        "invalid_ticket",
    ),
    ("alg-A128KW", lambda d: ".".join(frame(d, header=header_with(d, alg="A128KW"))), "invalid_ticket"),
    ("alg-dir", _unwrapped_as_dir, "invalid_ticket"),
    (
        "alg-RSA-OAEP",
        lambda d: ".".join(frame(d, header=header_with(d, alg="RSA-OAEP-256"))),
        "invalid_ticket",
    ),
    ("alg-missing", lambda d: ".".join(frame(d, header=header_with(d, alg=None))), "invalid_ticket"),
    ("enc-A128GCM", lambda d: ".".join(frame(d, header=header_with(d, enc="A128GCM"))), "invalid_ticket"),
    (
        "enc-A256CBC-HS512",
        lambda d: ".".join(frame(d, header=header_with(d, enc="A256CBC-HS512"))),
        "invalid_ticket",
    ),
    ("extra-member", lambda d: ".".join(frame(d, header=header_with(d, typ="JWT"))), "invalid_ticket"),
    (
        "extra-jku",
        lambda d: ".".join(frame(d, header=header_with(d, jku="https://evil.example/"))),
        "invalid_ticket",
    ),
    ("zip", lambda d: ".".join(frame(d, header=header_with(d, zip="DEF"))), "invalid_ticket"),
    ("cty-lowercase", lambda d: ".".join(frame(d, header=header_with(d, cty="jwt"))), "invalid_ticket"),
    ("cty-missing", lambda d: ".".join(frame(d, header=header_with(d, cty=None))), "invalid_ticket"),
    (
        "cty-json",
        lambda d: ".".join(frame(d, header=header_with(d, cty="application/json"))),
        "invalid_ticket",
    ),
    ("kid-missing", lambda d: ".".join(frame(d, header=header_with(d, kid=None))), "invalid_ticket"),
    ("kid-not-string", lambda d: ".".join(frame(d, header=header_with(d, kid=7))), "invalid_ticket"),
    ("kid-unknown", lambda d: ".".join(frame(d, kid="seal-nobody")), "unknown_key"),
    (
        "header-duplicate-alg",
        lambda d: _replace(
            frame(d), 0, b64url(b'{"alg":"dir","alg":"A256KW","enc":"A256GCM","kid":"x","cty":"JWT"}')
        ),
        "invalid_ticket",
    ),
    ("header-not-json", lambda d: _replace(frame(d), 0, b64url(b"A256KW")), "invalid_ticket"),
    ("four-parts", lambda d: ".".join(frame(d)[:4]), "invalid_ticket"),
    ("six-parts", lambda d: ".".join([*frame(d), "AAAA"]), "invalid_ticket"),
    ("empty-ciphertext", lambda d: _replace(frame(d), 3, ""), "invalid_ticket"),
    ("short-tag", lambda d: _replace(p := frame(d), 4, p[4][:-3]), "invalid_ticket"),
    (
        "wrapped-key-too-long",
        lambda d: _replace(p := frame(d), 1, b64url(b64url_decode(p[1]) + b"\0" * 8)),
        "invalid_ticket",
    ),
    ("padded-part", lambda d: _replace(p := frame(d), 2, p[2] + "="), "invalid_ticket"),
    ("standard-alphabet", lambda d: _replace(p := frame(d), 3, p[3][:-1] + "+"), "invalid_ticket"),
    ("oversized", lambda d: ".".join(frame(d, inner=b"x" * 6000)), "invalid_ticket"),
    ("inner-not-a-jws", lambda d: ".".join(frame(d, inner=b"hello")), "invalid_ticket"),
    ("inner-not-ascii", lambda d: ".".join(frame(d, inner="é.é.é".encode())), "invalid_ticket"),
    ("inner-sealed-again", lambda d: ".".join(frame(d, inner=mint(d).encode())), "invalid_ticket"),
    ("inner-with-cfz", _inner_with_cfz, "invalid_ticket"),
]


@pytest.mark.parametrize(("make", "code"), [c[1:] for c in DECRYPT_CASES], ids=[c[0] for c in DECRYPT_CASES])
def test_verify_rejects_sealed(keys_dir: Path, make: Make, code: str) -> None:
    token = make(keys_dir)
    with pytest.raises(TicketError) as caught:
        check(token, keys_dir)
    assert caught.value.code == code and caught.value.status == 401
    if code == "unknown_key":
        assert isinstance(caught.value, UnknownKeyError) and caught.value.sealed


@pytest.mark.parametrize(("make", "code"), [c[1:] for c in DECRYPT_CASES], ids=[c[0] for c in DECRYPT_CASES])
def test_edge_answers_each_sealed_rejection(
    client: TestClient, keys_dir: Path, make: Make, code: str
) -> None:
    token = make(keys_dir)
    with pytest.raises(WebSocketDenialResponse) as caught:
        with client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + token]):
            pass
    assert caught.value.status_code == 401
    assert caught.value.json()["error"]["code"] == code


def test_an_edge_without_seal_keys_refuses_sealed_tickets_and_takes_plain_ones(
    keys_dir: Path, clock: FakeClock, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Minted elsewhere: a fresh memory:// edge admits those from its start + leeway + 1 on.
    sealed, plain = mint(keys_dir), mint(keys_dir, sealed=False, now=AFTER_START)
    settings = Settings(keys_dir=keys_dir, seal_keys_file=keys_dir / "elsewhere.json", sealed_tickets=False)
    with TestClient(create_app(settings, clock=clock)) as client:
        clock.advance(1)  # the plain ticket's `iat` is then within the leeway of the edge's clock
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + sealed]):
                pass
        assert caught.value.status_code == 401 and caught.value.json()["error"]["code"] == "unknown_key"
        with client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + plain]) as ws:
            ws.send_json(START_EVENT)
            assert ws.receive_json()["type"] == "session.started"
        # It mints plain tickets (sealing is off here), which any edge can read.
        minted = client.post(URL, headers={"Authorization": f"Bearer {api_key}"}).json()["client_secret"]
        assert len(minted.split(".")) == 3
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "no seal keys" in r.getMessage()]
    assert warnings and "elsewhere.json" in warnings[0].getMessage()


def test_a_minter_without_a_seal_key_refuses_to_mint_rather_than_issue_plain(
    keys_dir: Path, clock: FakeClock, api_key: str
) -> None:
    os.unlink(keys_dir / SEAL_FILE)
    with TestClient(create_app(Settings(keys_dir=keys_dir), clock=clock)) as client:
        response = client.post(URL, headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "tickets_disabled"
    assert "seal key" in response.json()["error"]["message"]


def test_a_rotated_seal_file_is_picked_up_without_a_restart(
    keys_dir: Path, clock: FakeClock, api_key: str, tmp_path: Path
) -> None:
    """An edge reading a copy of seal.json: the copy is replaced, a ticket sealed with the new key opens."""
    copy = tmp_path / "copy" / SEAL_FILE
    copy.parent.mkdir()
    copy.write_bytes((keys_dir / SEAL_FILE).read_bytes())
    copy.chmod(0o600)  # a secret: the service refuses a copy others may read
    edge = Settings(keys_dir=keys_dir, seal_keys_file=copy)
    with TestClient(create_app(edge, clock=clock)) as client:
        rotate(keys_dir, now=NOW)
        rotate(keys_dir, now=NOW + 1)  # twice: the key that seals now was never in the old copy
        token = mint(keys_dir, now=AFTER_START)  # minted elsewhere, after the edge's first seconds
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + token]):
                pass
        assert caught.value.json()["error"]["code"] == "unknown_key"
        os.replace(_copied(keys_dir, tmp_path), copy)  # the operator distributes the new file
        clock.advance(1)  # past the 0.5 s stat interval and the unknown-kid rate limit
        with client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + token]) as ws:
            ws.send_json(START_EVENT)
            assert ws.receive_json()["type"] == "session.started"


def _copied(keys_dir: Path, tmp_path: Path) -> Path:
    staged = tmp_path / "staged.json"
    staged.write_bytes((keys_dir / SEAL_FILE).read_bytes())
    staged.chmod(0o600)
    return staged


def test_mint_seals_by_default_and_plain_on_request(keys_dir: Path, clock: FakeClock, api_key: str) -> None:
    body = {"config": {"instructions": SECRET_INSTRUCTIONS}}
    for sealed, parts in ((True, 5), (False, 3)):
        settings = Settings(keys_dir=keys_dir, sealed_tickets=sealed)
        with TestClient(create_app(settings, clock=clock)) as client:
            response = client.post(URL, headers={"Authorization": f"Bearer {api_key}"}, json=body)
            token = response.json()["client_secret"]
            assert len(token.split(".")) == parts
            assert claims_of(token, keys_dir)["cfg"] == body["config"]
            with client.websocket_connect("/v3/realtime", subprotocols=["opper-ticket." + token]) as ws:
                ws.send_json(START_EVENT)
                started = ws.receive_json()
                assert started["type"] == "session.started"


def test_a_key_with_the_same_kid_as_a_signing_key_is_not_confused(keys_dir: Path) -> None:
    """A JWE naming a signing kid meets an unknown seal key; a JWS naming a seal kid, an unknown signer."""
    signer = signer_of(KeySet.load(keys_dir))
    with pytest.raises(UnknownKeyError) as caught:
        check(".".join(frame(keys_dir, kid=signer.kid)), keys_dir)
    assert caught.value.sealed
    sealer: SealKey | None = seal_keys(keys_dir).sealer
    assert sealer is not None
    head = b64url(json.dumps({"alg": "EdDSA", "kid": sealer.kid, "typ": "opper-ticket+jwt"}).encode())
    inner = mint(keys_dir, sealed=False).split(".")
    with pytest.raises(UnknownKeyError) as caught:
        check(f"{head}.{inner[1]}.{inner[2]}", keys_dir)
    assert not caught.value.sealed


def test_joserfc_reads_our_sealed_ticket_and_we_read_its(keys_dir: Path) -> None:
    """A second JOSE library (Python's joserfc) agrees with our framing both ways."""
    from joserfc import jwe as joserfc_jwe
    from joserfc.jwk import OctKey

    sealer = seal_keys(keys_dir).sealer
    assert sealer is not None
    key = OctKey.import_key(sealer.secret)
    header = {"alg": "A256KW", "enc": "A256GCM", "kid": sealer.kid, "cty": "JWT"}
    ours = mint(keys_dir, {"instructions": SECRET_INSTRUCTIONS})
    opened = joserfc_jwe.decrypt_compact(ours, key)
    assert opened.protected == header
    assert opened.plaintext is not None and opened.plaintext.decode() == signed_part(ours, keys_dir)
    theirs = joserfc_jwe.encrypt_compact(header, mint(keys_dir, {"voice": "marin"}, sealed=False), key)
    assert check(theirs, keys_dir).config == {"voice": "marin"}
