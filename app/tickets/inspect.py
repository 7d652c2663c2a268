"""`python -m app.tickets inspect` (`make inspect TICKET=...`): look inside one ticket, as this node would.

Opens a sealed ticket with the local seal keys (`REALTIME_SEAL_KEYS_FILE`, else `<keys dir>/seal.json`),
checks the signature with the local keys (`REALTIME_KEYS_DIR`) or the minter's JWKS
(`REALTIME_JWKS_URL`), and prints the headers, the claims, the bound config, the lock list, the
expiry, the ticket's `tid` (as the logs show it) and a verdict: `valid`, `expired`, `unknown_key`,
`invalid_ticket`, or `used` when the configured replay store says the ticket was redeemed. The exit
status is 0 only for `valid`. Key material is never printed: no seal key, no private key, and no
signature or ciphertext of the ticket itself.

The ticket is read from the argument, or from standard input when the argument is `-` or absent
(a command line is visible to other users of the machine; standard input is not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import httpx
import redis

from app.config import Settings
from app.exceptions import (
    InvalidTicketError,
    KeySetError,
    SettingsError,
    TicketError,
    TicketExpiredError,
    UnknownKeyError,
)
from app.tickets.claims import rfc3339, tid
from app.tickets.jwe import unseal
from app.tickets.jwks import parse_jwks
from app.tickets.keys import KeySet
from app.tickets.sealkeys import SealKeySet
from app.tickets.segments import json_object, segment_bytes
from app.tickets.ticket import Ticket, verify

VERDICTS = ("valid", "expired", "unknown_key", "invalid_ticket", "used")
JWKS_TIMEOUT_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 2.0
MAX_INPUT_BYTES = 65_536
STDIN = "-"


def _segment_json(segment: str, what: str) -> dict[str, Any] | None:
    try:
        return json_object(segment_bytes(segment, what), what)
    except InvalidTicketError:
        return None


def load_keys(settings: Settings) -> KeySet:
    """The signing keys this node verifies with: the minter's JWKS, or the keys directory.

    Raises:
        KeySetError: neither can be read.
    """
    if settings.jwks_url is None:
        return KeySet.load(settings.keys_dir)
    try:
        response = httpx.get(settings.jwks_url, timeout=JWKS_TIMEOUT_SECONDS)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise KeySetError(f"cannot fetch the JWKS at {settings.jwks_url}: {type(exc).__name__}") from None
    return parse_jwks(document)[0]


def load_seal_keys(settings: Settings) -> SealKeySet:
    path = settings.seal_keys_path
    return SealKeySet.load(path) if path.exists() else SealKeySet.empty()


def replay_state(settings: Settings, jti: str) -> str:
    """What the configured replay store says: `used`, `unused`, or why it cannot say."""
    if settings.replay_url == "memory://":
        return "unknown (memory:// lives inside the serving process; only that process knows)"
    try:
        client = redis.Redis.from_url(
            settings.replay_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        try:
            found = client.exists(settings.replay_prefix + jti)
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"unknown (the replay store did not answer: {type(exc).__name__})"
    return "used" if found else "unused"


class Report:
    """The lines printed, in order, and the verdict."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def line(self, label: str, value: object) -> None:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=True)
        self.out.write(f"{label + ':':<14}{text}\n")


def inspect_ticket(token: str, settings: Settings, out: TextIO, *, now: float) -> str:
    """Print what `token` holds and return the verdict."""
    report = Report(out)
    token = token.strip()
    parts = token.split(".")
    sealed = len(parts) == 5
    report.line(
        "form", f"{'sealed (JWE, 5 parts)' if sealed else f'{len(parts)} part(s)'}, {len(token)} bytes"
    )
    seal_keys = SealKeySet.empty()
    inner = parts
    if sealed:
        outer = _segment_json(parts[0], "JWE header")
        report.line("seal header", outer if outer is not None else "(not JSON)")
        try:
            seal_keys = load_seal_keys(settings)
        except KeySetError as exc:
            report.line("seal keys", exc.message)
        try:
            opened = unseal(parts, seal_keys).decode("ascii", "replace")
            inner = opened.split(".")
            report.line("sealed by", f"seal key {outer.get('kid') if outer else '?'} (opened here)")
        except UnknownKeyError as exc:
            report.line("sealed by", f"seal key {exc.kid}: not in {settings.seal_keys_path}")
            inner = []
        except InvalidTicketError as exc:
            report.line("sealed by", f"cannot open: {exc.message}")
            inner = []
    claims: dict[str, Any] | None = None
    if len(inner) == 3:
        report.line("header", _segment_json(inner[0], "header") or "(not JSON)")
        claims = _segment_json(inner[1], "payload")
        if claims is not None:
            shown = {key: value for key, value in claims.items() if key not in ("cfg", "cfz", "lck")}
            report.line("claims", shown)
    try:
        keys = load_keys(settings)
    except KeySetError as exc:
        report.line("keys", exc.message)
        keys = KeySet.empty()
    ticket: Ticket | None = None
    verdict: str
    reason = ""
    try:
        ticket = verify(
            token,
            keys,
            seal_keys=seal_keys,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway_seconds,
            max_bytes=settings.ticket_max_bytes,
            now=now,
        )
        verdict = "valid"
    except TicketExpiredError as exc:
        verdict, reason = "expired", exc.message
    except UnknownKeyError as exc:
        which = "seal" if exc.sealed else "signing"
        source = settings.seal_keys_path if exc.sealed else (settings.jwks_url or settings.keys_dir)
        verdict, reason = "unknown_key", f"{which} key {exc.kid} is not in {source}"
    except TicketError as exc:
        verdict, reason = "invalid_ticket", exc.message
    if ticket is not None:
        report.line("bound config", ticket.config)
        report.line("locked", list(ticket.locked))
    elif claims is not None:
        report.line("bound config", f"{json.dumps(claims.get('cfg', {}), sort_keys=True)} (not verified)")
        report.line("locked", f"{json.dumps(claims.get('lck', []))} (not verified)")
    expires = ticket.expires_at if ticket is not None else (claims or {}).get("exp")
    if isinstance(expires, int) and not isinstance(expires, bool):
        left = expires - now
        when = f"in {left:.0f} s" if left >= 0 else f"{-left:.0f} s ago"
        report.line("expires", f"{rfc3339(expires)} ({when}; leeway {settings.leeway_seconds} s)")
    jti = ticket.jti if ticket is not None else (claims or {}).get("jti")
    if isinstance(jti, str) and jti:
        report.line("tid", tid(jti))
    if ticket is not None:
        state = replay_state(settings, ticket.jti)
        report.line("replay store", state)
        if state == "used":
            verdict = "used"
    report.line("verdict", f"{verdict}{f' ({reason})' if reason else ''}")
    return verdict


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.tickets inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ticket", nargs="?", default=STDIN, help="the ticket, or - to read it from stdin")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
    except SettingsError as exc:
        print(f"error: invalid setting {exc.message}", file=sys.stderr)
        return 2
    from_stdin = args.ticket == STDIN
    token = (stdin or sys.stdin).read(MAX_INPUT_BYTES) if from_stdin else args.ticket
    if not token.strip():
        print("error: no ticket given (pass it as the argument, or on stdin)", file=sys.stderr)
        return 2
    verdict = inspect_ticket(token, settings, sys.stdout, now=time.time())
    return 0 if verdict == "valid" else 1


if __name__ == "__main__":
    sys.exit(main())
