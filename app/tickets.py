"""Tickets: `issue(...)` signs a compact JWS (EdDSA), `verify(...)` checks one; pure functions."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import secrets
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature

from app.exceptions import (
    InvalidTicketError,
    TicketExpiredError,
    TicketTooLargeError,
    UnknownKeyError,
)
from app.keys import KeySet, SigningKey

ALGORITHM = "EdDSA"  # fixed next to the key type, never read from the token (RFC 8725 section 3.1)
TYPE = "opper-ticket+jwt"
MAX_LIFETIME = 300
MAX_CONFIG_BYTES = 64 * 1024  # hard bound when inflating `cfz`
COMPRESS_FROM = 1024  # bound configs shorter than this (JSON bytes) are never worth deflating
HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "exp")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JTI = re.compile(r"[A-Za-z0-9_-]{22,}")  # base64url of at least 128 bits


@dataclass(frozen=True)
class Ticket:
    """A verified ticket: who it is for, when it ends, and what it binds."""

    kid: str
    project: str
    jti: str
    issued_at: int
    expires_at: int
    config: dict[str, Any]
    locked: tuple[str, ...]


@dataclass(frozen=True)
class IssuedTicket:
    token: str
    kid: str
    jti: str
    issued_at: int
    expires_at: int


def rfc3339(seconds: float) -> str:
    """`2026-05-13T15:32:00Z`: UTC, whole seconds."""
    return _rfc3339(int(seconds))


@functools.lru_cache(maxsize=512)  # a mint answers `iat + ttl`: one second's mints share a few values
def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# Built once: `json.dumps` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(value: object) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str) -> str:
    """The encoded protected header of `kid`'s tickets: the same bytes for every ticket it signs."""
    return b64url_encode(_json({"alg": ALGORITHM, "kid": kid, "typ": TYPE}))


def issue(
    signer: SigningKey,
    *,
    project: str,
    config: dict[str, Any],
    locked: tuple[str, ...],
    ttl: int,
    now: float,
    issuer: str,
    audience: str,
    max_bytes: int,
) -> IssuedTicket:
    """Sign a ticket for `project` binding `config` (non-zero bound fields) and `locked` names.

    Raises:
        TicketTooLargeError: the compact JWS would be longer than `max_bytes`.
    """
    if signer.private_key is None:
        raise ValueError(f"key {signer.kid} cannot sign: no private key")
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": project,
        "jti": secrets.token_urlsafe(16),
        "iat": iat,
        "exp": iat + ttl,
    }
    if config:
        claims["cfg"] = config
    if locked:
        claims["lck"] = list(locked)
    payload = _json(claims)
    # Deflate costs about two signatures (its state is set up anew each call), so it is tried only
    # where size matters; `cfz` is kept only when it is clearly shorter than the config.
    if config and len(payload) >= COMPRESS_FROM:
        raw = _json(config)
        packed = b64url_encode(zlib.compress(raw, 6, -15)) if len(raw) >= COMPRESS_FROM else ""
        if packed and len(packed) + 8 < len(raw):
            del claims["cfg"]
            claims["cfz"] = packed
            payload = _json(claims)
    signing_input = f"{_header_segment(signer.kid)}.{b64url_encode(payload)}"
    signature = signer.private_key.sign(signing_input.encode("ascii"))
    token = f"{signing_input}.{b64url_encode(signature)}"
    if len(token) > max_bytes:
        raise TicketTooLargeError(len(token), max_bytes)
    return IssuedTicket(token, signer.kid, claims["jti"], iat, iat + ttl)


def _b64url_decode(segment: str, what: str) -> bytes:
    """Strict base64url: the URL-safe alphabet only, no padding, canonical trailing bits."""
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise InvalidTicketError(f"the ticket's {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidTicketError(f"the ticket's {what} is not base64url") from None
    if b64url_encode(data) != segment:
        raise InvalidTicketError(f"the ticket's {what} is not canonical base64url")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except ValueError:
        raise InvalidTicketError(f"the ticket's {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidTicketError(f"the ticket's {what} is not a JSON object")
    return value


def _int_claim(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTicketError(f"the ticket's `{name}` claim is not an integer")
    return value


def verify(
    token: str,
    keys: KeySet,
    *,
    issuer: str,
    audience: str,
    leeway: int,
    max_bytes: int,
    now: float,
) -> Ticket:
    """Verify a ticket against a key set and return it; never returns a bool.

    The header is parsed once, by this function: it must be exactly `alg`/`kid`/`typ`.

    Raises:
        UnknownKeyError: a string `kid` that is not in `keys` (the caller may refresh its key set
            and call again once).
        InvalidTicketError: too long, not a compact JWS, not strict base64url, a header member that
            is not allowed, wrong `alg` or `typ`, a bad signature, a missing or malformed claim, wrong
            `iss`/`aud`, a lifetime over 300 s, `iat` in the future, a config that does not inflate
            within its bound.
        TicketExpiredError: `exp` is past, beyond `leeway`.
    """
    if not token:
        raise InvalidTicketError("the ticket is empty")
    if len(token) > max_bytes:
        raise InvalidTicketError(f"the ticket is longer than {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidTicketError("the ticket is not a compact JWS")
    kid = _header_kid(parts[0])
    key = keys.get(kid)
    if key is None:
        raise UnknownKeyError(kid)
    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    try:
        key.public_key.verify(_b64url_decode(parts[2], "signature"), signing_input)
    except InvalidSignature:
        raise InvalidTicketError("the ticket's signature does not verify") from None
    claims = _json_object(_b64url_decode(parts[1], "payload"), "payload")
    return _check_claims(claims, kid, issuer=issuer, audience=audience, leeway=leeway, now=now)


@functools.lru_cache(maxsize=64)
def _header_kid(segment: str) -> str:
    """The `kid` of an encoded header that passes every header rule.

    Every ticket one key signs has the same header bytes, so a key's header is checked once and
    remembered; a header that fails raises, and failures are not remembered.
    """
    header = _json_object(_b64url_decode(segment, "header"), "header")
    extra = sorted(set(header) - HEADER_MEMBERS)
    if extra:
        raise InvalidTicketError(f"the ticket header has members that are not allowed: {extra}")
    if header.get("alg") != ALGORITHM:
        raise InvalidTicketError(f"the ticket must be signed with {ALGORITHM}")
    if header.get("typ") != TYPE:
        raise InvalidTicketError(f"the ticket's `typ` must be {TYPE}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidTicketError("the ticket header has no string `kid`")
    return kid


def _check_claims(
    claims: dict[str, Any], kid: str, *, issuer: str, audience: str, leeway: int, now: float
) -> Ticket:
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise InvalidTicketError(f"the ticket has no `{name}` claim")
    if claims["iss"] != issuer:
        raise InvalidTicketError("the ticket was issued by someone else (`iss`)")
    if claims["aud"] != audience:
        raise InvalidTicketError("the ticket is meant for someone else (`aud`)")
    project, jti = claims["sub"], claims["jti"]
    if not isinstance(project, str) or not project:
        raise InvalidTicketError("the ticket's `sub` claim is not a project id")
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise InvalidTicketError("the ticket's `jti` claim is not 128 random bits in base64url")
    iat, exp = _int_claim(claims, "iat"), _int_claim(claims, "exp")
    if exp <= iat or exp - iat > MAX_LIFETIME:
        raise InvalidTicketError(f"the ticket's lifetime must be 1 to {MAX_LIFETIME} seconds")
    if now > exp + leeway:
        raise TicketExpiredError(f"the ticket expired at {rfc3339(exp)}", server_time=rfc3339(now))
    if iat > now + leeway:
        raise InvalidTicketError("the ticket was issued in the future: check the minter's clock")
    return Ticket(
        kid=kid,
        project=project,
        jti=jti,
        issued_at=iat,
        expires_at=exp,
        config=_bound_config(claims),
        locked=_locked(claims),
    )


def _bound_config(claims: dict[str, Any]) -> dict[str, Any]:
    if "cfg" in claims and "cfz" in claims:
        raise InvalidTicketError("the ticket carries both `cfg` and `cfz`")
    if "cfz" in claims:
        packed = claims["cfz"]
        if not isinstance(packed, str):
            raise InvalidTicketError("the ticket's `cfz` claim is not a string")
        inflater = zlib.decompressobj(-15)
        try:
            raw = inflater.decompress(_b64url_decode(packed, "cfz claim"), MAX_CONFIG_BYTES)
        except zlib.error:
            raise InvalidTicketError("the ticket's `cfz` claim does not inflate") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise InvalidTicketError(
                f"the ticket's `cfz` claim inflates past {MAX_CONFIG_BYTES} bytes or is truncated"
            )
        return _json_object(raw, "cfz claim")
    config = claims.get("cfg", {})
    if not isinstance(config, dict):
        raise InvalidTicketError("the ticket's `cfg` claim is not an object")
    return config


def _locked(claims: dict[str, Any]) -> tuple[str, ...]:
    locked = claims.get("lck", [])
    if not isinstance(locked, list) or not all(isinstance(name, str) for name in locked):
        raise InvalidTicketError("the ticket's `lck` claim is not a list of names")
    return tuple(locked)
