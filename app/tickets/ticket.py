"""Tickets: `issue(...)` signs a compact JWS (EdDSA) and seals it, `verify(...)` checks one; pure functions.

A sealed ticket is a nested JWT (RFC 7519 section 5.2): the signed JWS encrypted as a compact JWE
(`app.tickets.jwe`). A plain ticket is the JWS alone. `verify` tells them apart by their number of parts.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

from app.exceptions import InvalidTicketError, TicketTooLargeError, UnknownKeyError
from app.tickets import jwe
from app.tickets.base64url import b64url
from app.tickets.claims import Ticket as Ticket
from app.tickets.claims import check_claims
from app.tickets.claims import rfc3339 as rfc3339
from app.tickets.keys import KeySet, SigningKey
from app.tickets.sealkeys import SealKey, SealKeySet
from app.tickets.segments import json_object, segment_bytes

ALGORITHM = "EdDSA"  # fixed next to the key type, never read from the token (RFC 8725 section 3.1)
TYPE = "opper-ticket+jwt"
# The key signs and checks the signature (libsodium, `SigningKey.sign` and `.verifies`); the framing
# around it is this module's, stricter than PyJWT's `decode` (exact header members, no duplicate JSON
# members). The algorithm is fixed here, never read from the token (RFC 8725 section 3.1).
COMPRESS_FROM = 1024  # bound configs shorter than this (JSON bytes) are never worth deflating
HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
# Every character a compact JWS or JWE may hold: checked before anything else reads the token, by
# deleting them (a C loop over the bytes, several times faster than a regular expression's match).
_COMPACT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@dataclass(frozen=True)
class IssuedTicket:
    token: str
    kid: str
    jti: str
    issued_at: int
    expires_at: int


# Built once: `json.dumps` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(value: object) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str) -> str:
    """The encoded protected header of `kid`'s tickets, exactly `{"alg":"EdDSA","kid":...,"typ":...}`.

    The same bytes for every ticket one key signs, so they are built once per key; the JWS is then
    one signature over `header.payload` (RFC 7515 section 5.1). PyJWT's `encode` wrote the same
    bytes at about a third of the signature's cost again per ticket (PERFORMANCE.md); a test checks
    that PyJWT reads our tickets.
    """
    return b64url(_json({"alg": ALGORITHM, "kid": kid, "typ": TYPE}))


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
    seal: SealKey | None = None,
    api_key_id: str | None = None,
) -> IssuedTicket:
    """Sign a ticket for `project` binding `config` (non-zero bound fields) and `locked` names.

    With a `seal` key the signed ticket is encrypted (a sealed ticket) and its config is never
    compressed; without one it is a plain JWS whose config may be deflated into `cfz`. `api_key_id`
    (the minting key's id) goes in the `akid` claim, so that revoking the key revokes its tickets.

    Raises:
        TicketTooLargeError: the ticket (the outer token when sealed) would be longer than `max_bytes`.
    """
    if signer.private_key is None:
        raise ValueError(f"key {signer.kid} cannot sign: no private key")
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": project,
        "jti": b64url(os.urandom(16)),  # as `secrets.token_urlsafe(16)`, one call less
        "iat": iat,
        "exp": iat + ttl,
    }
    if api_key_id is not None:
        claims["akid"] = api_key_id
    if config:
        claims["cfg"] = config
    if locked:
        claims["lck"] = list(locked)
    payload = _json(claims)
    # Deflate costs about two signatures (its state is set up anew each call), so it is tried only
    # where size matters; `cfz` is kept only when it is clearly shorter than the config. Never
    # before encryption: the size of a compressed secret tells whoever can choose part of it the
    # rest (RFC 8725 section 3.6).
    if seal is None and config and len(payload) >= COMPRESS_FROM:
        raw = _json(config)
        packed = b64url(zlib.compress(raw, 6, -15)) if len(raw) >= COMPRESS_FROM else ""
        if packed and len(packed) + 8 < len(raw):
            del claims["cfg"]
            claims["cfz"] = packed
            payload = _json(claims)
    signing_input = f"{_header_segment(signer.kid)}.{b64url(payload)}"
    signature = signer.sign(signing_input.encode("ascii"))
    token = f"{signing_input}.{b64url(signature)}"
    if seal is not None:
        token = jwe.seal(token.encode("ascii"), seal)
    if len(token) > max_bytes:
        raise TicketTooLargeError(len(token), max_bytes)
    return IssuedTicket(token, signer.kid, claims["jti"], iat, iat + ttl)


def verify(
    token: str,
    keys: KeySet,
    *,
    seal_keys: SealKeySet | None = None,
    issuer: str,
    audience: str,
    leeway: int,
    max_bytes: int,
    now: float,
) -> Ticket:
    """Verify a ticket, sealed (five parts) or plain (three), and return it; never returns a bool.

    The size budget and the character set are checked on the token as presented, before any
    parsing. A sealed ticket is decrypted with `seal_keys` first, then its content is held to every
    rule of a plain one. Each header is parsed once, by this module: exactly `alg`/`enc`/`kid`/`cty`
    outside, exactly `alg`/`kid`/`typ` inside.

    Raises:
        UnknownKeyError: a string `kid` that is not in `keys`, or (`sealed=True`) a seal `kid` that
            is not in `seal_keys` (the caller may refresh that key set and call again once).
        InvalidTicketError: too long, a character outside base64url and `.`, not a compact JWS or
            JWE, not strict base64url, a header member that is not allowed, wrong `alg`, `enc`,
            `cty` or `typ`, a key that does not unwrap, a tag or signature that does not verify,
            a missing or malformed claim, wrong `iss`/`aud`, a lifetime over 300 s, `iat` in the
            future, a config that does not inflate within its bound, `cfz` in a sealed ticket.
        TicketExpiredError: `exp` is past, beyond `leeway`.
    """
    if not token:
        raise InvalidTicketError("the ticket is empty")
    if len(token) > max_bytes:
        raise InvalidTicketError(f"the ticket is longer than {max_bytes} bytes")
    if not token.isascii() or token.encode("ascii").translate(None, _COMPACT):
        raise InvalidTicketError("the ticket holds characters other than base64url and `.`")
    parts = token.split(".")
    sealed = len(parts) == 5
    if sealed:
        inner = jwe.unseal(parts, seal_keys or SealKeySet.empty())
        if not inner or inner.translate(None, _COMPACT):
            raise InvalidTicketError("the sealed ticket does not hold a compact JWS")
        token = inner.decode("ascii")
        parts = token.split(".")
    if len(parts) != 3:
        raise InvalidTicketError("the ticket is not a compact JWS or JWE")
    kid = _header_kid(parts[0])
    key = keys.get(kid)
    if key is None:
        raise UnknownKeyError(kid)
    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    if not key.verifies(signing_input, segment_bytes(parts[2], "signature")):
        raise InvalidTicketError("the ticket's signature does not verify")
    claims = json_object(segment_bytes(parts[1], "payload"), "payload")
    if sealed and "cfz" in claims:
        raise InvalidTicketError("a sealed ticket never carries a compressed config (`cfz`)")
    return check_claims(claims, kid, issuer=issuer, audience=audience, leeway=leeway, now=now)


@functools.lru_cache(maxsize=64)
def _header_kid(segment: str) -> str:
    """The `kid` of an encoded header that passes every header rule.

    Every ticket one key signs has the same header bytes, so a key's header is checked once and
    remembered; a header that fails raises, and failures are not remembered.
    """
    header = json_object(segment_bytes(segment, "header"), "header")
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
