"""Ed25519 as the tickets use it (libsodium): the same signatures as OpenSSL's, and the strict checks:
a non-canonical `S` and small-order public keys are refused."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from app.exceptions import InvalidTicketError
from app.tickets.keys import KeySet, SigningKey
from app.tickets.rotation import ensure_keys
from app.tickets.ticket import issue, verify

NOW = 1_800_000_000
ISS = AUD = "opper-realtime"
# The order of the Ed25519 base point (RFC 8032 section 5.1).
L = 2**252 + 27742317777372353535851937790883648493
# Encodings of points of small order (RFC 8032 section 5.1.3 decodes each): the identity (order 1),
# y = -1 (order 2), y = 0 with either sign of x (order 4).
SMALL_ORDER = {
    "identity": bytes([1]) + bytes(31),
    "order-2": bytes([0xEC]) + bytes([0xFF] * 30) + bytes([0x7F]),
    "order-4": bytes(32),
    "order-4-negative": bytes(31) + bytes([0x80]),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims() -> dict[str, object]:
    return {"iss": ISS, "aud": AUD, "sub": "proj_1", "jti": b64(os.urandom(16)), "iat": NOW, "exp": NOW + 60}


def check(token: str, keys: KeySet) -> object:
    return verify(token, keys, issuer=ISS, audience=AUD, leeway=0, max_bytes=6144, now=NOW + 1)


@pytest.fixture
def keys(tmp_path: Path) -> KeySet:
    ensure_keys(tmp_path, now=NOW - 60)
    return KeySet.load(tmp_path)


def signer_of(keys: KeySet) -> SigningKey:
    signer = keys.signer
    assert signer is not None and signer.private_key is not None
    return signer


def test_signatures_are_openssls_bytes_both_ways(keys: KeySet) -> None:
    signer = signer_of(keys)
    assert signer.private_key is not None
    message = os.urandom(1500)
    assert signer.sign(message) == signer.private_key.sign(message)
    signer.public_key.verify(signer.sign(message), message)  # raises if OpenSSL disagrees
    assert signer.verifies(message, signer.private_key.sign(message))
    assert not signer.verifies(message + b"x", signer.sign(message))


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_a_signature_of_the_wrong_length_does_not_verify(keys: KeySet, length: int) -> None:
    signer = signer_of(keys)
    message = b"header.payload"
    assert not signer.verifies(message, (signer.sign(message) * 2)[:length])


def test_a_key_without_its_private_half_cannot_sign(keys: KeySet) -> None:
    signer = signer_of(keys)
    public_only = SigningKey(signer.kid, "active", signer.public_key, signer.x, 0, 0)
    with pytest.raises(ValueError, match="cannot sign"):
        public_only.sign(b"anything")
    assert public_only.verifies(b"anything", signer.sign(b"anything"))


def test_a_non_canonical_s_is_refused(keys: KeySet) -> None:
    """S + L satisfies the verification equation as S does (a malleable copy); it must not verify."""
    token = issue(
        signer_of(keys), project="proj_1", config={}, locked=(), ttl=60, now=NOW,
        issuer=ISS, audience=AUD, max_bytes=6144,
    ).token  # fmt: skip
    check(token, keys)  # the original verifies
    signing_input, signature = token.rsplit(".", 1)
    raw = unb64(signature)
    s = int.from_bytes(raw[32:], "little")
    assert s < L and s + L < 2**256
    malleated = f"{signing_input}.{b64(raw[:32] + (s + L).to_bytes(32, 'little'))}"
    with pytest.raises(InvalidTicketError, match="signature does not verify"):
        check(malleated, keys)


@pytest.mark.parametrize("point", list(SMALL_ORDER.values()), ids=list(SMALL_ORDER))
def test_a_small_order_public_key_verifies_nothing(point: bytes) -> None:
    """With A and R of small order and S = 0 the cofactorless equation holds for many messages
    (for the identity, every message): a universal forgery that libsodium refuses."""
    public = Ed25519PublicKey.from_public_bytes(point)
    key = SigningKey("small", "active", public, b64(point), 0, 0)
    keys = KeySet(keys=(key,))
    header = b64(json.dumps({"alg": "EdDSA", "kid": "small", "typ": "opper-ticket+jwt"}).encode())
    for _ in range(4):  # a few messages: for order 2 and 4 some hold the equation, some not
        signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
        for r in (SMALL_ORDER["identity"], point):
            forged = f"{signing_input}.{b64(r + bytes(32))}"
            assert not key.verifies(signing_input.encode(), r + bytes(32))
            with pytest.raises(InvalidTicketError, match="signature does not verify"):
                check(forged, keys)
