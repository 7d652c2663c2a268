"""Logging without secrets: tickets and keys are cut out of every line uvicorn prints."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from urllib.parse import quote, unquote_plus

# The writer thread lives in app.logwriter; its names are kept here, where the log config is.
from app.logwriter import QueueWriter as QueueWriter
from app.logwriter import write_through as write_through

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


#: Set by the WebSocket endpoint once it has answered with a denial response. uvicorn's
#: websockets-sansio protocol then logs "ASGI callable returned without completing handshake." at
#: ERROR, although a denial is an ordinary answer; the app runs in the task that logs it, so the
#: flag is visible to the filter and that one line is dropped for denials only.
DENIED: ContextVar[bool] = ContextVar("realtime_denied", default=False)
_AFTER_DENIAL = "ASGI callable returned without completing handshake."
#: uvicorn's WARNING lines about a client's malformed request: the client's fault, answered with a
#: 400 or ignored, so at most INFO (a WARNING is for what an operator should act on).
#: A text frame that is not UTF-8 is answered with close 1007; uvicorn logs it with `exception`, so
#: its traceback (of the client's bytes, not of a fault in the server) is dropped as well.
_CLIENT_FAULTS = frozenset(
    {
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "Invalid UTF-8 sequence received from client.",
    }
)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message with secrets removed and control characters escaped.

    Drops only uvicorn's line after a denial.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True  # already seen by this filter on a logger or another handler
        message = record.getMessage()
        if message == _AFTER_DENIAL and DENIED.get():
            return False
        if message in _CLIENT_FAULTS and record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        # The formatter then reads the finished message instead of formatting it a second time.
        record.msg, record.args = escape_controls(redact(message)), None
        record.redacted = True
        return True


_FILTER = RedactSecrets()
WATCHED = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "app")


def install(log_format: str = "text") -> None:
    """Put the filter on the loggers that may see request lines, and on their handlers.

    A logger's filter sees only records logged on that very logger; a handler's sees every record
    it writes, children's included. With `log_format` `json`, those handlers write JSON lines
    (whoever configured them: `python -m app.serve`, or uvicorn itself under `--factory`).
    Idempotent.
    """
    for name in (*WATCHED, None):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)
            if log_format == "json" and isinstance(target, logging.Handler):
                if not isinstance(target.formatter, JsonFormat):
                    target.setFormatter(JsonFormat())


def lighten() -> None:
    """Skip what our format never prints: thread and process names.

    These are public switches the logging documentation lists under "Optimization"; each record then
    costs a little less. Called by `python -m app.serve`.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


FIELDS = "fields"  # the record attribute holding a line's fields


def fields(**values: object) -> dict[str, dict[str, object]]:
    """The `extra` of a logging call that carries `values` as the line's fields.

    A line that traces something (a mint, a redemption, a session's end) carries its fields in the
    record: `logger.info("session ended", extra=fields(session_id=..., tid=...))`. The text format
    appends them to the message as ` key=value`; the JSON format writes them as members of the
    line's object. Field values are this service's own (ids, codes, numbers), never a secret; they
    are redacted and their control characters escaped all the same.
    """
    return {FIELDS: values}


_NOT_PLAIN = re.compile(r"[^A-Za-z0-9_\-.:,/+*@]")


def _field_text(value: object) -> str:
    if not isinstance(value, str):
        return str(value)  # a number: nothing to redact, escape or quote
    text = escape_controls(redact(value))
    if text and not _NOT_PLAIN.search(text):
        return text
    return json.dumps(text)  # quoted: a space, `=` or quote in a value cannot forge another field


def fields_text(record: logging.LogRecord) -> str:
    """` key=value ...` for the record's fields (empty without any)."""
    values: dict[str, object] | None = getattr(record, FIELDS, None)
    if not values:
        return ""
    return "".join(f" {key}={_field_text(value)}" for key, value in values.items())


#: The service's line: `2026-05-13 15:32:00,123 INFO app.edge.realtime: redemption ok ...`.
LINE = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Format(logging.Formatter):
    """`%(asctime)s` as `2026-05-13 15:32:00,123`, the date part formatted once per second, not per line.

    With the service's `LINE` and a record without a traceback or stack, the line is put together
    directly: the same text as the standard formatter's, without its generic steps (a `%` over the
    record's whole `__dict__`, the checks for each optional part), which cost more than the line.
    """

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._stamp = (-1, "")  # (second, its text): one attribute, so threads never see half of it
        self._line = fmt == LINE

    def format(self, record: logging.LogRecord) -> str:
        # A line's fields (`fields`) follow its message as `key=value`.
        extra = fields_text(record) if hasattr(record, FIELDS) else ""
        if not self._line or record.exc_info or record.exc_text or record.stack_info:
            line, newline, rest = super().format(record).partition("\n")
            return f"{line}{extra}{newline}{rest}"
        message = record.message = record.getMessage()
        stamp = record.asctime = self.formatTime(record)
        return f"{stamp} {record.levelname} {record.name}: {message}{extra}"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{stamp[1]},{int(record.msecs):03d}"


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return escape_controls(redact(value if isinstance(value, str) else str(value)))


_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


class JsonFormat(logging.Formatter):
    """One JSON object per line: `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`, `msg`, the
    record's fields, and `exc` (the traceback) when there is one.

    The message is the one the redaction filter left (secrets cut out, control characters escaped);
    JSON's own escaping then keeps every line one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        body: dict[str, object] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        values: dict[str, object] | None = getattr(record, FIELDS, None)
        if values:
            for key, value in values.items():
                if key not in _RESERVED:
                    body[key] = _json_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exc"] = record.exc_text
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, ensure_ascii=True, separators=(",", ":"))


def config(level: str = "INFO", log_format: str = "text") -> dict[str, object]:
    """A `logging.config.dictConfig` for `python -m app.serve`: uvicorn's lines, secrets removed.

    `log_format` `json` writes one JSON object per line (`JsonFormat`).
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {
            "plain": {"()": Format, "fmt": LINE},
            "json": {"()": JsonFormat},
        },
        "handlers": {
            "stderr": {
                "()": QueueWriter,
                "formatter": "json" if log_format == "json" else "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level, "propagate": False},
            "app": {"handlers": ["stderr"], "level": level, "propagate": False},
            # websockets' connection objects: at INFO they would print `connection open` for each
            # handshake, after uvicorn's `[accepted]` line; at DEBUG every frame and header.
            "websockets": {
                "handlers": ["stderr"],
                "level": "WARNING" if level == "INFO" else level,
                "propagate": False,
            },
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
