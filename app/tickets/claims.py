"""A signed ticket's claims, checked: who it is for, when it ends, what it binds; pure functions."""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.exceptions import InvalidTicketError, TicketExpiredError
from app.tickets.base64url import b64url
from app.tickets.keys import MAX_TICKET_SECONDS
from app.tickets.segments import json_object, segment_bytes

REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "exp")
MAX_CONFIG_BYTES = 64 * 1024  # hard bound when inflating `cfz`
MAX_TIMESTAMP = 253_402_300_800  # 10000-01-01: `iat`/`exp` must be printable as RFC 3339 dates
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
    api_key_id: str | None = None  # `akid`: the API key that minted it (revocation by key)


TID_CHARS = 12


def tid(jti: str) -> str:
    """A ticket's trace id in logs: the first 12 base64url characters of SHA-256 of its `jti`.

    It names one ticket in the mint, redemption and session-end lines without being the `jti`
    (which nothing accepts back either, but it stays inside the ticket) or the ticket itself.
    """
    return b64url(hashlib.sha256(jti.encode("ascii", "surrogateescape")).digest())[:TID_CHARS]


def rfc3339(seconds: float) -> str:
    """`2026-05-13T15:32:00Z`: UTC, whole seconds."""
    return _rfc3339(int(seconds))


@functools.lru_cache(maxsize=512)  # a mint answers `iat + ttl`: one second's mints share a few values
def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_claim(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTicketError(f"the ticket's `{name}` claim is not an integer")
    if not 0 <= value < MAX_TIMESTAMP:
        raise InvalidTicketError(f"the ticket's `{name}` claim is not a time this service can read")
    return value


def check_claims(
    claims: dict[str, Any], kid: str, *, issuer: str, audience: str, leeway: int, now: float
) -> Ticket:
    """The ticket the signed `claims` describe, once every claim passes (`kid` signed it).

    Raises:
        InvalidTicketError: a missing or malformed claim, wrong `iss`/`aud`, a lifetime over the
            maximum, `iat` in the future, a config that does not inflate within its bound.
        TicketExpiredError: `exp` is past, beyond `leeway`.
    """
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
    if exp <= iat or exp - iat > MAX_TICKET_SECONDS:
        raise InvalidTicketError(f"the ticket's lifetime must be 1 to {MAX_TICKET_SECONDS} seconds")
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
        api_key_id=_api_key_id(claims),
    )


def _api_key_id(claims: dict[str, Any]) -> str | None:
    akid = claims.get("akid")
    if akid is None:
        return None
    if not isinstance(akid, str) or not akid or len(akid) > 128:
        raise InvalidTicketError("the ticket's `akid` claim is not an API key id")
    return akid


def _bound_config(claims: dict[str, Any]) -> dict[str, Any]:
    if "cfg" in claims and "cfz" in claims:
        raise InvalidTicketError("the ticket carries both `cfg` and `cfz`")
    if "cfz" in claims:
        packed = claims["cfz"]
        if not isinstance(packed, str):
            raise InvalidTicketError("the ticket's `cfz` claim is not a string")
        inflater = zlib.decompressobj(-15)
        try:
            raw = inflater.decompress(segment_bytes(packed, "cfz claim"), MAX_CONFIG_BYTES)
        except zlib.error:
            raise InvalidTicketError("the ticket's `cfz` claim does not inflate") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise InvalidTicketError(
                f"the ticket's `cfz` claim inflates past {MAX_CONFIG_BYTES} bytes or is truncated"
            )
        return json_object(raw, "cfz claim")
    config = claims.get("cfg", {})
    if not isinstance(config, dict):
        raise InvalidTicketError("the ticket's `cfg` claim is not an object")
    return config


def _locked(claims: dict[str, Any]) -> tuple[str, ...]:
    locked = claims.get("lck", [])
    if not isinstance(locked, list) or not all(isinstance(name, str) for name in locked):
        raise InvalidTicketError("the ticket's `lck` claim is not a list of names")
    return tuple(locked)
