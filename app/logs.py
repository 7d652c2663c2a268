"""Logging without secrets: tickets and keys are cut out of every line uvicorn prints."""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar

# `ticket=<value>` in a path or query string, as uvicorn prints it in access lines and in
# `"WebSocket /v3/realtime?ticket=..."`; also any bearer token or ticket subprotocol that a
# library might print with headers.
_SECRETS = (
    (re.compile(r"([?&]ticket=)[^&\s\"']*"), r"\1[redacted]"),
    (re.compile(r"(opper-ticket\.)[A-Za-z0-9_.\-]+"), r"\1[redacted]"),
    (re.compile(r"((?i:bearer)\s+)[A-Za-z0-9_.~+/\-]+=*"), r"\1[redacted]"),
)


#: Set by the WebSocket endpoint once it has answered with a denial response. uvicorn's
#: websockets-sansio protocol then logs "ASGI callable returned without completing handshake." at
#: ERROR, although a denial is an ordinary answer; the app runs in the task that logs it, so the
#: flag is visible to the filter and that one line is dropped for denials only.
DENIED: ContextVar[bool] = ContextVar("realtime_denied", default=False)
_AFTER_DENIAL = "ASGI callable returned without completing handshake."


def redact(text: str) -> str:
    # Most lines carry no credential at all: one cheap look before any pattern runs.
    if "ticket=" not in text and "opper-ticket." not in text and "bearer" not in text.lower():
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message with secrets removed; drops only uvicorn's line after a denial."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True  # already seen by this filter on a logger or another handler
        message = record.getMessage()
        if message == _AFTER_DENIAL and DENIED.get():
            return False
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        record.redacted = True
        return True


_FILTER = RedactSecrets()
WATCHED = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "app")


def install() -> None:
    """Put the filter on the loggers that may see request lines, and on their handlers.

    A logger's filter sees only records logged on that very logger; a handler's sees every record
    it writes, children's included. Idempotent.
    """
    for name in (*WATCHED, None):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)


def lighten() -> None:
    """Skip what our format never prints: the caller's frame, thread and process names.

    These are the switches the logging documentation lists under "Optimization"; each record then
    costs a few microseconds less, which is measurable on a handshake. Called by `python -m app.serve`.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def config(level: str = "INFO") -> dict[str, object]:
    """A `logging.config.dictConfig` for `python -m app.serve`: uvicorn's lines, secrets removed."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level, "propagate": False},
            "app": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
