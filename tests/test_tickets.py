"""issue() and verify(): round trips, compression, the size budget, and every rejection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.exceptions import (
    InvalidTicketError,
    TicketError,
    TicketExpiredError,
    TicketTooLargeError,
    UnknownKeyError,
)
from app.tickets.keys import KeySet, SigningKey
from app.tickets.ticket import Ticket, issue, verify

NOW = 1_800_000_000
ISS = AUD = "opper-realtime"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def signer_of(keyset: KeySet) -> SigningKey:
    signer = keyset.signer
    assert signer is not None and signer.private_key is not None
    return signer


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "proj_1",
        "jti": b64(b"\x01" * 16),
        "iat": NOW,
        "exp": NOW + 60,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def _claims_json() -> str:
    return json.dumps(claims(), separators=(",", ":"))


def _signed_payload(key: SigningKey, payload: bytes) -> str:
    """A correctly signed ticket whose payload bytes are exactly `payload` (JWT claims are UTF-8)."""
    assert key.private_key is not None
    signing_input = f"{enc({'alg': 'EdDSA', 'kid': key.kid, 'typ': 'opper-ticket+jwt'})}.{b64(payload)}"
    return f"{signing_input}.{b64(key.private_key.sign(signing_input.encode()))}"


def forge(
    key: SigningKey,
    *,
    header: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    private: Ed25519PrivateKey | None = None,
) -> str:
    """A compact JWS built by hand, so tests control every byte."""
    head = header if header is not None else {"alg": "EdDSA", "kid": key.kid, "typ": "opper-ticket+jwt"}
    signing_input = f"{enc(head)}.{enc(body if body is not None else claims())}"
    signer = private or key.private_key
    assert signer is not None
    return f"{signing_input}.{b64(signer.sign(signing_input.encode()))}"


def check(token: str, keyset: KeySet, *, now: float = NOW, max_bytes: int = 6144) -> Ticket:
    return verify(token, keyset, issuer=ISS, audience=AUD, leeway=5, max_bytes=max_bytes, now=now)


def mint(keyset: KeySet, **options: Any) -> str:
    values: dict[str, Any] = {
        "project": "proj_1",
        "config": {},
        "locked": (),
        "ttl": 60,
        "now": NOW,
        "issuer": ISS,
        "audience": AUD,
        "max_bytes": 6144,
    }
    values.update(options)
    return issue(signer_of(keyset), **values).token


def test_round_trip_carries_project_config_and_locks(keyset: KeySet) -> None:
    config = {"model": "openai/gpt-realtime-2", "voice": "marin"}
    token = mint(keyset, config=config, locked=("output_transcription",))
    ticket = check(token, keyset)
    assert ticket.project == "proj_1"
    assert ticket.config == config
    assert ticket.locked == ("output_transcription",)
    assert ticket.expires_at - ticket.issued_at == 60
    assert ticket.kid == signer_of(keyset).kid


def test_header_is_exactly_alg_kid_typ(keyset: KeySet) -> None:
    token = mint(keyset)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": signer_of(keyset).kid, "typ": "opper-ticket+jwt"}


def test_empty_binding_has_no_cfg_and_no_lck(keyset: KeySet) -> None:
    payload = json.loads(base64.urlsafe_b64decode(mint(keyset).split(".")[1] + "=="))
    assert "cfg" not in payload and "cfz" not in payload and "lck" not in payload
    assert len(base64.urlsafe_b64decode(payload["jti"] + "==")) >= 16


def test_large_config_is_compressed_and_round_trips(keyset: KeySet) -> None:
    config = {"instructions": "Be brief and kind. " * 200}
    token = mint(keyset, config=config)
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert "cfz" in payload and "cfg" not in payload
    assert check(token, keyset).config == config


def test_issue_refuses_a_ticket_over_the_budget(keyset: KeySet) -> None:
    config = {"instructions": b64(secrets.token_bytes(3000))}  # random: does not compress
    with pytest.raises(TicketTooLargeError) as caught:
        mint(keyset, config=config, max_bytes=2000)
    assert caught.value.code == "ticket_too_large" and caught.value.status == 400
    assert caught.value.limit == 2000 and caught.value.size > 2000


def _hs256_with_public_key(key: SigningKey) -> str:
    pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{enc({'alg': 'HS256', 'kid': key.kid, 'typ': 'opper-ticket+jwt'})}.{enc(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _tamper_payload(key: SigningKey) -> str:
    head, _, sig = forge(key).split(".")
    return f"{head}.{enc(claims(sub='proj_other'))}.{sig}"


def _non_canonical(key: SigningKey) -> str:
    head, body, sig = forge(key).split(".")
    # Flip the unused low bits of the last base64 character: same bytes, another spelling.
    last = sig[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(last) ^ 1]
    return f"{head}.{body}.{sig[:-1]}{sibling}"


def _deflate_bomb(key: SigningKey) -> str:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = bomb.compress(b'{"instructions":"' + b"a" * 200_000 + b'"}') + bomb.flush()
    return forge(key, body=claims(cfz=b64(packed)))


DUPLICATE_ALG = b'{"alg":"EdDSA","alg":"none","typ":"opper-ticket+jwt"}'
Forger = Callable[[SigningKey], str]
CASES: list[tuple[str, Forger, type[TicketError], str]] = [
    (
        "bad-signature",
        lambda k: forge(k, private=Ed25519PrivateKey.generate()),
        InvalidTicketError,
        "invalid_ticket",
    ),
    ("tampered-payload", _tamper_payload, InvalidTicketError, "invalid_ticket"),
    (
        "alg-none",
        lambda k: f"{enc({'alg': 'none', 'kid': k.kid, 'typ': 'opper-ticket+jwt'})}.{enc(claims())}.",
        InvalidTicketError,
        "invalid_ticket",
    ),
    ("hs256-with-public-key", _hs256_with_public_key, InvalidTicketError, "invalid_ticket"),
    (
        "unknown-kid",
        lambda k: forge(k, header={"alg": "EdDSA", "kid": "nope", "typ": "opper-ticket+jwt"}),
        UnknownKeyError,
        "unknown_key",
    ),
    (
        "kid-missing",
        lambda k: forge(k, header={"alg": "EdDSA", "typ": "opper-ticket+jwt"}),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "kid-not-string",
        lambda k: forge(k, header={"alg": "EdDSA", "kid": 7, "typ": "opper-ticket+jwt"}),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "extra-jku",
        lambda k: forge(
            k,
            header={
                "alg": "EdDSA",
                "kid": k.kid,
                "typ": "opper-ticket+jwt",
                "jku": "https://evil.example/jwks",
            },
        ),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "extra-jwk",
        lambda k: forge(
            k, header={"alg": "EdDSA", "kid": k.kid, "typ": "opper-ticket+jwt", "jwk": k.public_jwk()}
        ),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "wrong-typ",
        lambda k: forge(k, header={"alg": "EdDSA", "kid": k.kid, "typ": "JWT"}),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "typ-case",
        lambda k: forge(k, header={"alg": "EdDSA", "kid": k.kid, "typ": "OPPER-TICKET+JWT"}),
        InvalidTicketError,
        "invalid_ticket",
    ),
    ("missing-iss", lambda k: forge(k, body=claims(iss=None)), InvalidTicketError, "invalid_ticket"),
    ("missing-aud", lambda k: forge(k, body=claims(aud=None)), InvalidTicketError, "invalid_ticket"),
    ("missing-sub", lambda k: forge(k, body=claims(sub=None)), InvalidTicketError, "invalid_ticket"),
    ("missing-jti", lambda k: forge(k, body=claims(jti=None)), InvalidTicketError, "invalid_ticket"),
    ("missing-iat", lambda k: forge(k, body=claims(iat=None)), InvalidTicketError, "invalid_ticket"),
    ("missing-exp", lambda k: forge(k, body=claims(exp=None)), InvalidTicketError, "invalid_ticket"),
    ("wrong-iss", lambda k: forge(k, body=claims(iss="someone-else")), InvalidTicketError, "invalid_ticket"),
    ("wrong-aud", lambda k: forge(k, body=claims(aud="someone-else")), InvalidTicketError, "invalid_ticket"),
    ("aud-as-list", lambda k: forge(k, body=claims(aud=[AUD])), InvalidTicketError, "invalid_ticket"),
    ("short-jti", lambda k: forge(k, body=claims(jti="abc")), InvalidTicketError, "invalid_ticket"),
    (
        "exp-as-string",
        lambda k: forge(k, body=claims(exp=str(NOW + 60))),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "expired",
        lambda k: forge(k, body=claims(iat=NOW - 120, exp=NOW - 6)),
        TicketExpiredError,
        "ticket_expired",
    ),
    (
        "iat-in-future",
        lambda k: forge(k, body=claims(iat=NOW + 6, exp=NOW + 66)),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "lifetime-over-300",
        lambda k: forge(k, body=claims(iat=NOW, exp=NOW + 301)),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "exp-before-iat",
        lambda k: forge(k, body=claims(iat=NOW, exp=NOW - 1)),
        InvalidTicketError,
        "invalid_ticket",
    ),
    ("oversized", lambda k: forge(k, body=claims(pad="x" * 7000)), InvalidTicketError, "invalid_ticket"),
    ("non-canonical-base64", _non_canonical, InvalidTicketError, "invalid_ticket"),
    ("padded-base64", lambda k: forge(k) + "=", InvalidTicketError, "invalid_ticket"),
    ("standard-alphabet", lambda k: forge(k)[:-1] + "+", InvalidTicketError, "invalid_ticket"),
    ("two-segments", lambda k: ".".join(forge(k).split(".")[:2]), InvalidTicketError, "invalid_ticket"),
    ("empty", lambda k: "", InvalidTicketError, "invalid_ticket"),
    (
        "header-not-json",
        lambda k: f"{b64(b'not json')}.{enc(claims())}.{b64(b'x' * 64)}",
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "duplicate-header-member",
        lambda k: f"{b64(DUPLICATE_ALG)}.{enc(claims())}.{b64(b'x' * 64)}",
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "cfg-and-cfz",
        lambda k: forge(k, body=claims(cfg={"voice": "ash"}, cfz="abc")),
        InvalidTicketError,
        "invalid_ticket",
    ),
    ("cfg-not-object", lambda k: forge(k, body=claims(cfg=["voice"])), InvalidTicketError, "invalid_ticket"),
    ("cfz-bomb", _deflate_bomb, InvalidTicketError, "invalid_ticket"),
    (
        "cfz-garbage",
        lambda k: forge(k, body=claims(cfz=b64(b"\xff\xfe garbage"))),
        InvalidTicketError,
        "invalid_ticket",
    ),
    ("lck-not-list", lambda k: forge(k, body=claims(lck="voice")), InvalidTicketError, "invalid_ticket"),
    (
        "payload-utf16",
        lambda k: _signed_payload(k, _claims_json().encode("utf-16")),
        InvalidTicketError,
        "invalid_ticket",
    ),
    (
        "payload-utf8-bom",
        lambda k: _signed_payload(k, b"\xef\xbb\xbf" + _claims_json().encode()),
        InvalidTicketError,
        "invalid_ticket",
    ),
]


@pytest.mark.parametrize(("forger", "error", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verify_rejects(keyset: KeySet, forger: Forger, error: type[TicketError], code: str) -> None:
    token = forger(signer_of(keyset))
    with pytest.raises(error) as caught:
        check(token, keyset)
    assert caught.value.code == code
    assert caught.value.status == 401


def test_expired_ticket_reports_server_time(keyset: KeySet) -> None:
    token = mint(keyset, ttl=10)
    with pytest.raises(TicketExpiredError) as caught:
        check(token, keyset, now=NOW + 16)
    assert caught.value.details == {"server_time": "2027-01-15T08:00:16Z"}


def test_leeway_softens_expiry_and_future_iat(keyset: KeySet) -> None:
    token = mint(keyset, ttl=10)
    assert check(token, keyset, now=NOW + 15).jti  # exp + leeway: still good
    assert check(token, keyset, now=NOW - 5).jti  # iat up to leeway ahead of our clock


def test_verify_never_returns_falsy_on_failure(keyset: KeySet) -> None:
    token = mint(keyset)
    other = KeySet.empty()
    with pytest.raises(UnknownKeyError) as caught:
        check(token, other)
    assert caught.value.kid == signer_of(keyset).kid


def test_tickets_are_standard_jws_that_pyjwt_reads(keyset: KeySet) -> None:
    """Interop: a general JOSE library verifies our tickets, and we verify its EdDSA tokens."""
    import jwt

    signer = signer_of(keyset)
    issued = issue(
        signer,
        project="proj_1",
        config={"model": "openai/gpt-realtime-2"},
        locked=("voice",),
        ttl=60,
        now=NOW,
        issuer=ISS,
        audience=AUD,
        max_bytes=6144,
    )
    assert signer.private_key is not None
    public = signer.private_key.public_key()
    decoded = jwt.decode(
        issued.token,
        public,
        algorithms=["EdDSA"],
        audience=AUD,
        issuer=ISS,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded["sub"] == "proj_1" and decoded["cfg"] == {"model": "openai/gpt-realtime-2"}
    assert jwt.get_unverified_header(issued.token) == {
        "alg": "EdDSA",
        "kid": signer.kid,
        "typ": "opper-ticket+jwt",
    }

    theirs = jwt.encode(
        claims(),
        signer.private_key,
        algorithm="EdDSA",
        headers={"kid": signer.kid, "typ": "opper-ticket+jwt"},
    )
    ticket = verify(theirs, keyset, issuer=ISS, audience=AUD, leeway=5, max_bytes=6144, now=NOW)
    assert ticket.project == "proj_1"
