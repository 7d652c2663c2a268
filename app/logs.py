"""Logging without secrets: tickets and keys are cut out of every line uvicorn prints."""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar

# The writer thread lives in app.logwriter; its names are kept here, where the log config is.
from app.logwriter import QueueWriter as QueueWriter
from app.logwriter import write_through as write_through
from app.redaction import escape_controls, redact

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
