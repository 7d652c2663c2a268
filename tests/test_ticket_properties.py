"""Property tests: whatever string arrives as a ticket, verify() returns a Ticket or raises a TicketError."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from app.exceptions import TicketError
from app.tickets import jwe
from app.tickets.base64url import b64url
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE, SealKeySet
from app.tickets.ticket import Ticket, issue, verify

NOW = 1_800_000_000
ISS = AUD = "opper-realtime"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Keys:
    def __init__(self, directory: Path) -> None:
        ensure_keys(directory, now=NOW - 60)
        self.signing = KeySet.load(directory)
        self.seal = SealKeySet.load(directory / SEAL_FILE)
        signer, sealer = self.signing.signer, self.seal.sealer
        assert signer is not None and signer.private_key is not None and sealer is not None
        self.signer, self.sealer = signer, sealer

    def mint(self, *, sealed: bool) -> str:
        return issue(
            self.signer,
            project="proj_1",
            config={"model": "openai/gpt-realtime-2", "instructions": "Be kind. " * 150},
            locked=("voice",),
            ttl=60,
            now=NOW,
            issuer=ISS,
            audience=AUD,
            max_bytes=6144,
            seal=self.sealer if sealed else None,
        ).token

    def sign(self, header: dict[str, Any], claims: bytes) -> str:
        assert self.signer.private_key is not None
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(claims)}"
        return f"{signing_input}.{b64url(self.signer.private_key.sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("properties") / "keys")


def outcome(token: str, keys: Keys) -> Ticket | TicketError:
    """The ticket, or the documented error; any other exception fails the test."""
    try:
        return verify(
            token,
            keys.signing,
            seal_keys=keys.seal,
            issuer=ISS,
            audience=AUD,
            leeway=5,
            max_bytes=6144,
            now=NOW,
        )
    except TicketError as exc:
        assert exc.status == 401 and exc.code in {"invalid_ticket", "unknown_key", "ticket_expired"}
        return exc


JSON: SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([10**400, -(10**300), 2**63, 1e308]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CLAIM_NAMES = st.sampled_from(["iss", "aud", "sub", "jti", "iat", "exp", "cfg", "cfz", "lck", "x"])
CLAIMS = st.dictionaries(CLAIM_NAMES, JSON | st.integers(NOW - 400, NOW + 400), max_size=10)


@PROPERTY
@given(token=st.text(max_size=300))
def test_any_text(keys: Keys, token: str) -> None:
    outcome(token, keys)


@PROPERTY
@given(parts=st.lists(st.text(alphabet=B64URL, max_size=60), min_size=1, max_size=7))
def test_any_dotted_base64url(keys: Keys, parts: list[str]) -> None:
    assert isinstance(outcome(".".join(parts), keys), TicketError)


@PROPERTY
@given(data=st.data(), sealed=st.booleans())
def test_a_valid_ticket_with_one_character_changed(keys: Keys, data: st.DataObject, sealed: bool) -> None:
    token = keys.mint(sealed=sealed)
    index = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(B64URL + ".=+/é\x00"))
    changed = token[:index] + char + token[index + 1 :]
    result = outcome(changed, keys)
    if changed != token and isinstance(result, Ticket):
        # Only the unused low bits of a segment's last character could change and still verify,
        # and strict base64url refuses those: any accepted change is a failure.
        pytest.fail(f"a changed ticket verified: index {index}, {char!r}")


@PROPERTY
@given(
    header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "x", "zip"]), JSON, max_size=5),
    claims=CLAIMS,
)
def test_signed_arbitrary_json(keys: Keys, header: dict[str, Any], claims: dict[str, Any]) -> None:
    """Correctly signed tokens whose header and claims are arbitrary JSON (huge numbers, nesting)."""
    header = {"alg": "EdDSA", "kid": keys.signer.kid, "typ": "opper-ticket+jwt", **header}
    token = keys.sign(header, json.dumps(claims).encode())
    outcome(token, keys)
    if len(token) < 5000:
        outcome(jwe.seal(token.encode(), keys.sealer), keys)  # the same, sealed


@PROPERTY
@given(header=st.dictionaries(st.sampled_from(["alg", "enc", "kid", "cty", "zip", "x"]), JSON, max_size=6))
def test_sealed_with_arbitrary_header(keys: Keys, header: dict[str, Any]) -> None:
    parts = keys.mint(sealed=True).split(".")
    parts[0] = b64url(json.dumps(header).encode())
    assert isinstance(outcome(".".join(parts), keys), TicketError)


@PROPERTY
@given(plaintext=st.binary(max_size=400))
def test_sealed_arbitrary_bytes(keys: Keys, plaintext: bytes) -> None:
    """A correctly sealed JWE whose content is anything at all."""
    assert isinstance(outcome(jwe.seal(plaintext, keys.sealer), keys), TicketError)


def test_deep_nesting_and_huge_numbers_in_every_part(keys: Keys) -> None:
    """The parser's own limits (recursion, integer digits, float range) are invalid tickets, not crashes."""
    deep = b64url(b"[" * 4000)
    huge_int = b'{"alg":"EdDSA","kid":' + b"9" * 4400 + b',"typ":"opper-ticket+jwt"}'
    huge_float = b'{"alg":"EdDSA","kid":"k","typ":"opper-ticket+jwt","n":1e400}'
    nan = b'{"alg":"EdDSA","kid":NaN,"typ":"opper-ticket+jwt"}'
    signature = b64url(secrets.token_bytes(64))
    claims = b64url(b"{}")
    for header in (deep, b64url(huge_int), b64url(huge_float), b64url(nan)):
        result = outcome(f"{header}.{claims}.{signature}", keys)
        assert isinstance(result, TicketError) and result.code == "invalid_ticket"
        sealed = keys.mint(sealed=True).split(".")
        result = outcome(".".join([header, *sealed[1:]]), keys)
        assert isinstance(result, TicketError) and result.code == "invalid_ticket"
    for claims_json in (b'{"iat":' + b"9" * 4400 + b"}", b"[" * 4000, b'{"exp":1e400}', b'{"iat":-1e999}'):
        result = outcome(
            keys.sign({"alg": "EdDSA", "kid": keys.signer.kid, "typ": "opper-ticket+jwt"}, claims_json), keys
        )
        assert isinstance(result, TicketError) and result.code == "invalid_ticket"
    far = {"iss": ISS, "aud": AUD, "sub": "p", "jti": "A" * 22, "iat": -(10**30), "exp": -(10**30) + 60}
    result = outcome(
        keys.sign(
            {"alg": "EdDSA", "kid": keys.signer.kid, "typ": "opper-ticket+jwt"}, json.dumps(far).encode()
        ),
        keys,
    )
    assert isinstance(result, TicketError) and result.code == "invalid_ticket"
