"""Logging without secrets: tickets and keys are cut out of every line uvicorn prints."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import traceback
import weakref
from contextvars import ContextVar
from typing import TextIO

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
        # The formatter then reads the finished message instead of formatting it a second time.
        record.msg, record.args = redact(message), None
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


class Format(logging.Formatter):
    """`%(asctime)s` as `2026-05-13 15:32:00,123`, the date part formatted once per second, not per line."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._stamp = (-1, "")  # (second, its text): one attribute, so threads never see half of it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{stamp[1]},{int(record.msecs):03d}"


class LineWriter(logging.StreamHandler[TextIO]):
    """A stream handler that writes the lines logged in one pass of the event loop with one write.

    Under load a handshake logs several lines; writing and flushing each costs more than formatting
    it. A line logged on the event loop's thread is queued and the queue is written at the end of
    the loop's current pass (`call_soon`), so lines leave within the same pass, in order. Lines at
    WARNING and above, lines from other threads and lines logged with no loop running are written at
    once (with anything queued before them); closing the handler (as `logging.shutdown` does at
    exit) flushes the queue. Once the server shuts down (`write_through`), every line is written at
    once: uvicorn ends the process with the signal it caught, and no exit handler runs after it.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._queued: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on
        self._write_through = False
        _WRITERS.add(self)

    def write_through(self) -> None:
        """Write what is queued, and every later line at once."""
        self._write_through = True
        self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - logging's contract: report it, never raise into the caller
            self.handleError(record)
            return
        self._queued.append(line)
        if record.levelno < logging.WARNING and not self._write_through:
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and self._flush_on is loop:
                return  # a flush is already due at the end of this pass
            if loop is not None and self._flush_on is None:
                self._flush_on = loop
                loop.call_soon(self.flush)
                return
        # At WARNING and above, off the loop, on a second loop (another thread's, or a new one after
        # the first stopped with a flush still due), or shutting down: write now, with the queue.
        self.flush()

    def close(self) -> None:
        self.flush()
        super().close()

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            if not self._queued:
                return
            text, self._queued = "".join(self._queued), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # noqa: BLE001 - as StreamHandler does: report a failing stream, go on
                if logging.raiseExceptions:
                    traceback.print_exc(file=sys.stderr)
        finally:
            self.release()


_WRITERS: weakref.WeakSet[LineWriter] = weakref.WeakSet()


def write_through() -> None:
    """Every LineWriter writes what it has queued, and from now on each line at once.

    Called when the server starts shutting down: after its last lines uvicorn raises the signal it
    caught again, which ends the process without running exit handlers, so nothing may wait.
    """
    for writer in list(_WRITERS):
        writer.write_through()


def config(level: str = "INFO") -> dict[str, object]:
    """A `logging.config.dictConfig` for `python -m app.serve`: uvicorn's lines, secrets removed."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {
            "plain": {"()": Format, "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {
                "()": LineWriter,
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
