"""Logging without secrets: tickets and keys are cut out of every line uvicorn prints."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import time
import weakref
from contextvars import ContextVar
from typing import Any, TextIO
from urllib.parse import unquote_plus

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


def redact(text: str) -> str:
    """`text` with every ticket value, bearer token and JWS/JWE-shaped token replaced by `[redacted]`."""
    lowered = text.lower()
    # Most lines carry no credential at all: one cheap look before any pattern runs.
    if "=" in text and ("ticket" in lowered or "%" in text):
        text = _QUERY_PAIR.sub(_query_pair, text)
    if "opper-ticket" in lowered:
        text = _SUBPROTOCOL.sub(r"\1" + _REDACTED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1" + _REDACTED, text)
    if len(text) >= _TOKEN_CHARS and _TOKEN_DOT.search(text):
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
    """Skip what our format never prints: thread and process names.

    These are public switches the logging documentation lists under "Optimization"; each record then
    costs a little less. Called by `python -m app.serve`.
    """
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


QUEUE_LINES = 100_000
BATCH_LINES = 1_000  # most lines the writer thread joins into one write
POLL_SECONDS = 0.02  # how often the writer thread looks for lines
_NOTHING = object()


def _line_record(text: str) -> logging.LogRecord:
    """A record that prints as `text` under the default format."""
    return logging.makeLogRecord({"msg": text})


class _Listener(logging.handlers.QueueListener):
    """The writer thread: it takes every line waiting and hands them to the stream in one write."""

    def __init__(self, lines: queue.SimpleQueue[Any], handler: logging.Handler) -> None:
        super().__init__(lines, handler)
        self.lines = lines
        self._held: Any = _NOTHING  # the stop mark, met while batching; returned next

    def dequeue(self, block: bool) -> logging.LogRecord:
        if self._held is not _NOTHING:
            mark, self._held = self._held, _NOTHING
            return mark  # type: ignore[no-any-return]
        # Poll rather than block: a thread blocked on the queue is woken by every line put on it,
        # and under load that wake-up (a futex call and a hand-over of the GIL) cost the event loop
        # more than formatting the line (PERFORMANCE.md). Lines now wait at most `POLL_SECONDS`,
        # and each wake-up writes every line that waits.
        while True:
            try:
                first = self.lines.get_nowait()
                break
            except queue.Empty:
                if not block:
                    raise
                try:
                    time.sleep(POLL_SECONDS)
                except OSError:
                    # A clock that refuses timed sleeps (a process run under faketime, whose
                    # nanosleep can fail with EINVAL): wait on the queue itself for the next line.
                    first = self.lines.get()
                    break
        if not isinstance(first, str):
            return first  # type: ignore[no-any-return]
        batch = [first]
        while len(batch) < BATCH_LINES:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, str):
                self._held = item
                break
            batch.append(item)
        return _line_record("\n".join(batch))


class QueueWriter(logging.handlers.QueueHandler):
    """Writes lines to a stream from a thread of its own: the event loop never waits on a write.

    The standard library's `QueueHandler` formats each record where it is logged (the redaction
    filter runs there too) and puts the finished line on a queue; a `QueueListener` thread takes
    the lines waiting off it and writes them, in order, with one write. At most `capacity` lines
    wait; beyond that a line is dropped and counted, and the count is written when there is room
    again. Closing the handler (as `logging.shutdown` does at exit) writes what is queued. Once the
    server shuts down (`write_through`), the thread is stopped after writing the queue and every
    later line is written at once: uvicorn ends the process with the signal it caught, and no exit
    handler runs after it.
    """

    def __init__(self, stream: TextIO | None = None, *, capacity: int = QUEUE_LINES) -> None:
        lines: queue.SimpleQueue[Any] = queue.SimpleQueue()  # in C, no Python-level lock
        super().__init__(lines)
        self.lines, self.capacity = lines, capacity
        self.dropped = 0  # lines lost while the queue was full, not yet reported
        # Lines arrive formatted; the target's default format prints them as they are.
        self.target = logging.StreamHandler(stream)
        self.listener = _Listener(lines, self.target)
        self.listener.start()
        self._write_through = False
        _WRITERS.add(self)

    def prepare(self, record: logging.LogRecord) -> str:
        # The finished line, not a copy of the record: the thread needs nothing else.
        return self.format(record)

    def enqueue(self, record: Any) -> None:
        # A stream that stops taking lines (a stalled pipe) must neither block the event loop nor
        # grow memory without bound: past `capacity` queued lines, lines are dropped and counted.
        if self.lines.qsize() >= self.capacity:
            self.dropped += 1
            return
        if self.dropped:
            note = f"{self.dropped} log lines dropped: the log stream did not keep up"
            fields = {"name": __name__, "msg": note, "levelno": logging.WARNING, "levelname": "WARNING"}
            self.lines.put(self.prepare(logging.makeLogRecord(fields)))
            self.dropped = 0
        self.lines.put(record)

    def emit(self, record: logging.LogRecord) -> None:
        if not self._write_through:
            super().emit(record)
            return
        try:
            self.target.handle(_line_record(self.prepare(record)))
        except Exception:  # noqa: BLE001 - logging's contract: report it, never raise into the caller
            self.handleError(record)

    def write_through(self) -> None:
        """Write what is queued, and every later line at once, on the caller's thread."""
        self.acquire()
        try:
            if not self._write_through:
                self._write_through = True
                self.listener.stop()  # writes every queued line, then the thread ends
        finally:
            self.release()

    def close(self) -> None:
        self.write_through()
        self.target.flush()
        super().close()


_WRITERS: weakref.WeakSet[QueueWriter] = weakref.WeakSet()


def write_through() -> None:
    """Every QueueWriter writes what it has queued, and from now on each line at once.

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
                "()": QueueWriter,
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
