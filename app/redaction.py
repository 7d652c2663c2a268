"""Secrets cut out of text: tickets, bearer tokens, token-shaped strings and configured secret values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote_plus

# A ticket can reach a line in a query string (uvicorn prints the path with its query in access lines
# and in `"WebSocket /v3/realtime?ticket=..."`), in a ticket subprotocol, or as a bearer token.
# Query keys are compared after percent-decoding and case-folding: `?%74icket=` and `?TICKET=` name
# no ticket for the app, but a client might be lured into one and the value is still a credential.
# A value may open with quotes (`?ticket="<T>`): the app strips none, but they must not hide what follows.
_QUERY_PAIR = re.compile(r"([?&;])([^=&;?#\s\"']*)=([\"']*[^&;#\s\"']*)")
_SUBPROTOCOL = re.compile(r"((?i:opper-ticket)(?:\.|%2[eE]))[^\s,;&\"']+")
_BEARER = re.compile(r"((?i:bearer)\s+)[A-Za-z0-9_.~+/\-]+=*")
_REDACTED = "[redacted]"
# Anything shaped like a compact JWS (3 parts) or JWE (5 parts): base64url segments joined by dots
# (or `%2E`), the first one long, the whole long enough to be a token. It catches a ticket wherever
# it sits in a line, behind a query key the app would not read (`?ticket[]=`, `?a=b?ticket=`) or a
# quote; a long dotted host name may be cut out too, which costs a log reader little.
_SEGMENT = r"[A-Za-z0-9_\-]"
_DOT = r"(?:\.|%2[eE])"
_COMPACT_TOKEN = re.compile(
    rf"(?<!{_SEGMENT}){_SEGMENT}{{16,}}{_DOT}{_SEGMENT}*{_DOT}{_SEGMENT}*(?:{_DOT}{_SEGMENT}*{_DOT}{_SEGMENT}*)?"
)
_TOKEN_CHARS = 40  # shorter dotted words (addresses, versions, host names) are left alone
# The cheap first look: a dot right after 16 base64url characters. Searching for the dot first is
# several times faster than trying the token pattern at every position of every line.
_TOKEN_DOT = re.compile(rf"\.(?<={_SEGMENT}{{16}}\.)|%2[eE](?<={_SEGMENT}{{16}}%2[eE])")

# C0 and C1 control characters, DEL and the Unicode line separators: a NUL, an ESC sequence or a
# newline from a request path, query or header must not forge, hide or colour log lines.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _query_pair(match: re.Match[str]) -> str:
    if unquote_plus(match.group(2)).strip().lower() != "ticket":
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}={_REDACTED}"


def _compact_token(match: re.Match[str]) -> str:
    return _REDACTED if len(match.group(0)) >= _TOKEN_CHARS else match.group(0)


# Configured secrets, redacted by their literal values whatever their shape (a provider key need not
# start with `sk-`): by group (`settings`: the provider and relay keys; `seal`: the seal keys), each
# group replaced whole when it is set again, so the set stays as small as the configuration.
MAX_SECRETS = 64  # per group
MIN_SECRET_CHARS = 8  # shorter values are no keys, and cutting them out would cut words out of lines
_SECRET_GROUPS: dict[str, tuple[str, ...]] = {}
_SECRET_PATTERN: re.Pattern[str] | None = None
_SECRET_FORMS: tuple[str, ...] = ()


def set_secrets(group: str, values: Iterable[str | None]) -> None:
    """Redact these values (and their JSON-escaped and percent-encoded forms) from log lines and
    from what `redact_secrets` is given, instead of the values set for `group` before."""
    global _SECRET_PATTERN, _SECRET_FORMS
    _SECRET_GROUPS[group] = tuple(value for value in values if value and len(value) >= MIN_SECRET_CHARS)
    forms = {
        form
        for group_values in _SECRET_GROUPS.values()
        for value in group_values
        for form in (value, json.dumps(value)[1:-1], quote(value, safe=""))
    }
    # Longest first: a value that contains another is cut out whole.
    ordered = sorted(forms, key=len, reverse=True)
    _SECRET_PATTERN = re.compile("|".join(map(re.escape, ordered))) if ordered else None
    _SECRET_FORMS = tuple(ordered)


def add_secrets(values: Iterable[str | None], *, group: str = "settings") -> None:
    """`set_secrets` adding to the group's values (the newest `MAX_SECRETS` kept: one process
    serves one configuration, tests build many)."""
    merged = dict.fromkeys([*_SECRET_GROUPS.get(group, ()), *(value for value in values if value)])
    set_secrets(group, list(merged)[-MAX_SECRETS:])


def redact_secrets(text: str) -> str:
    """`text` with every configured secret value replaced by `[redacted]` (the other patterns of
    `redact` are for log lines; this one also runs on the events and close reasons a client gets)."""
    pattern = _SECRET_PATTERN
    # A substring search per value is several times faster than the alternation on a frame of
    # audio, and almost every frame holds none of them.
    if pattern is None or not any(form in text for form in _SECRET_FORMS):
        return text
    return pattern.sub(_REDACTED, text)


def redact(text: str) -> str:
    """`text` with every ticket value, bearer token, JWS/JWE-shaped token and configured secret
    replaced by `[redacted]`."""
    text = redact_secrets(text)
    lowered = text.lower()
    # Most lines carry no credential at all: one cheap look before any pattern runs.
    # A query pair follows `?`, `&` or `;`: the audit line (`minted ticket kid=...`) has none of them.
    if "=" in text and ("ticket" in lowered or "%" in text) and ("?" in text or "&" in text or ";" in text):
        text = _QUERY_PAIR.sub(_query_pair, text)
    if "opper-ticket" in lowered:
        text = _SUBPROTOCOL.sub(r"\1" + _REDACTED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1" + _REDACTED, text)
    if len(text) >= _TOKEN_CHARS and ("." in text or "%2" in text) and _TOKEN_DOT.search(text):
        text = _COMPACT_TOKEN.sub(_compact_token, text)
    return text


def escape_controls(text: str) -> str:
    r"""`text` with control characters written as `\xNN` (a trailing newline is dropped)."""
    if text.isprintable():
        return text
    return _CONTROL.sub(_escape, text.removesuffix("\n"))
