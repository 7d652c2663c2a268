"""The service's log handler: lines written off the event loop, in order, none lost; what lines hide."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.logs import LINE, Format, QueueWriter, RedactSecrets, config, write_through
from app.redaction import escape_controls, redact
from app.tickets.rotation import ensure_keys
from tests.servers import ServiceProcess

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Recorder(io.StringIO):
    """A stream that remembers each write and the thread that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.threads: set[int] = set()

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.threads.add(threading.get_ident())
        return len(text)


@pytest.fixture
def stream() -> Recorder:
    return Recorder()


@pytest.fixture
def handler(stream: Recorder) -> Iterator[QueueWriter]:
    writer = QueueWriter(stream)
    writer.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    yield writer
    writer.close()


@pytest.fixture
def logger(handler: QueueWriter) -> Iterator[logging.Logger]:
    log = logging.getLogger("tests.logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log
    log.removeHandler(handler)


def lines(stream: Recorder) -> list[str]:
    return "".join(stream.writes).splitlines()


def test_lines_logged_on_the_loop_are_written_by_another_thread_in_order(
    logger: logging.Logger, handler: QueueWriter, stream: Recorder
) -> None:
    async def main() -> None:
        for number in range(500):
            logger.info("line %d", number)
        logger.warning("trouble")

    asyncio.run(main())
    handler.close()  # what logging.shutdown does at exit: every queued line is written first
    assert lines(stream) == [f"INFO line {number}" for number in range(500)] + ["WARNING trouble"]
    assert threading.get_ident() not in stream.threads


def test_lines_from_several_threads_all_arrive(
    logger: logging.Logger, handler: QueueWriter, stream: Recorder
) -> None:
    def log_many(name: str) -> None:
        for number in range(200):
            logger.info("%s %d", name, number)

    threads = [threading.Thread(target=log_many, args=(f"t{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    written = lines(stream)
    assert len(written) == 800
    for index in range(4):
        assert [line for line in written if line.startswith(f"INFO t{index} ")] == [
            f"INFO t{index} {number}" for number in range(200)
        ]


def test_an_exception_is_written_with_its_traceback(
    logger: logging.Logger, handler: QueueWriter, stream: Recorder
) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    handler.close()
    text = "".join(stream.writes)
    assert text.startswith("ERROR failed\nTraceback") and "ValueError: boom" in text


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.5, 1_700_000_001.999, 1_700_000_059.0])
def test_the_cached_timestamp_matches_the_standard_format(created: float) -> None:
    ours, standard = Format(FORMAT), logging.Formatter(FORMAT)
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    ours.format(logging.LogRecord("app.x", logging.INFO, __file__, 1, "warm", None, None))
    assert ours.format(record) == standard.format(record)


def _record(message: str, args: tuple[object, ...] | None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app.edge.realtime", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def _failure() -> logging.LogRecord:
    try:
        raise ValueError("boom")
    except ValueError:
        return logging.LogRecord("app.x", logging.ERROR, __file__, 1, "failed %d", (3,), sys.exc_info())


@pytest.mark.parametrize(
    "make",
    [
        lambda: _record("redemption %s kid=%s latency_ms=%.2f", ("ok", "k-1", 0.123)),
        lambda: _record("no arguments, 100% literal", None),
        lambda: _record("a mapping: %(x)s", ({"x": 1},)),
        lambda: _record("cached traceback", None, exc_text="Traceback (most recent call last):\n  ..."),
        lambda: _record("with a stack", None, stack_info="Stack (most recent call last):\n  ..."),
        _failure,
    ],
)
def test_the_service_line_is_the_standard_formatters(make: Callable[[], logging.LogRecord]) -> None:
    ours, standard = Format(LINE), logging.Formatter(LINE)
    record, twin = make(), make()
    twin.created, twin.msecs = record.created, record.msecs
    assert ours.format(record) == standard.format(twin)
    assert (record.message, record.asctime) == (twin.message, twin.asctime)


def test_a_stalled_stream_blocks_no_caller_and_the_dropped_lines_are_counted() -> None:
    class Stalled(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.go = threading.Event()

        def write(self, text: str) -> int:
            self.go.wait(timeout=30)
            return super().write(text)

    stream = Stalled()
    writer = QueueWriter(stream, capacity=10)
    writer.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    records = [logging.LogRecord("x", logging.INFO, __file__, 1, f"line {n}", None, None) for n in range(50)]
    for record in records:
        writer.handle(record)  # returns although nothing can be written
    dropped = writer.dropped
    assert dropped > 0
    stream.go.set()
    deadline = time.monotonic() + 30
    while writer.lines.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "after", None, None))
    writer.close()
    written = lines(stream)
    kept = [line for line in written if line.startswith("INFO line ")]
    assert kept == [f"INFO line {n}" for n in range(len(kept))] and len(kept) + dropped == 50
    assert written[-2:] == [
        f"WARNING {dropped} log lines dropped: the log stream did not keep up",
        "INFO after",
    ]


def test_write_through_writes_the_queue_and_every_later_line_at_once(
    logger: logging.Logger, stream: Recorder
) -> None:
    async def main() -> tuple[list[str], list[str]]:
        for number in range(100):
            logger.info("queued %d", number)
        write_through()
        queued = lines(stream)
        logger.info("after")
        return queued, lines(stream)

    queued, after = asyncio.run(main())
    assert queued == [f"INFO queued {number}" for number in range(100)]
    assert after == [*queued, "INFO after"]
    assert threading.get_ident() in stream.threads  # the line after was written by the caller


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /v3/realtime?ticket=abc.def HTTP/1.1", "GET /v3/realtime?ticket=[redacted] HTTP/1.1"),
        ("GET /v3/realtime?%74icket=abc HTTP/1.1", "GET /v3/realtime?%74icket=[redacted] HTTP/1.1"),
        ("GET /v3/realtime?a=1&TICKET=abc", "GET /v3/realtime?a=1&TICKET=[redacted]"),
        ("GET /x?%54%49%43%4B%45%54=abc&b=2", "GET /x?%54%49%43%4B%45%54=[redacted]&b=2"),
        ("GET /x?tick%65t=abc", "GET /x?tick%65t=[redacted]"),
        ("GET /x?tickets=abc&ticketx=1", "GET /x?tickets=abc&ticketx=1"),
        ("protocols: opper-ticket.eyJ.a-b_c, realtime", "protocols: opper-ticket.[redacted], realtime"),
        ("OPPER-TICKET%2Eabc", "OPPER-TICKET%2E[redacted]"),
        ("Authorization: Bearer opk_abc123", "Authorization: Bearer [redacted]"),
    ],
    ids=[
        "plain",
        "percent",
        "upper",
        "all-percent",
        "percent-inside",
        "other-keys",
        "subprotocol",
        "subprotocol-encoded",
        "bearer",
    ],
)
def test_redaction(line: str, expected: str) -> None:
    assert redact(line) == expected


JWS = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
JWE = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aXZpdml2aXZpdg.Y2lwaGVydGV4dA.dGFndGFndGFn"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f'GET /v3/realtime?ticket="{JWS} HTTP/1.1', "GET /v3/realtime?ticket=[redacted] HTTP/1.1"),
        (f"GET /v3/realtime?ticket='{JWE} HTTP/1.1", "GET /v3/realtime?ticket=[redacted] HTTP/1.1"),
        (f"GET /v3/realtime?ticket[]={JWS} HTTP/1.1", "GET /v3/realtime?ticket[]=[redacted] HTTP/1.1"),
        (f"GET /v3/realtime?a=b?ticket={JWE} HTTP/1.1", "GET /v3/realtime?a=b?ticket=[redacted] HTTP/1.1"),
        (f"GET /x/{JWS}/y", "GET /x/[redacted]/y"),
        (f"token {JWS.replace('.', '%2E')} end", "token [redacted] end"),
        (f'"{JWE}"', '"[redacted]"'),
        (
            "edge-1.example.com 10.0.0.1 v1.2.3 app.upstreams.local",
            "edge-1.example.com 10.0.0.1 v1.2.3 app.upstreams.local",
        ),
    ],
    ids=[
        "double-quote",
        "single-quote",
        "brackets",
        "second-question-mark",
        "in-path",
        "percent-dots",
        "jwe",
        "dotted-words",
    ],
)
def test_anything_shaped_like_a_token_is_redacted(line: str, expected: str) -> None:
    assert redact(line) == expected


@pytest.mark.parametrize(
    ("level", "websockets_level"), [("INFO", "WARNING"), ("DEBUG", "DEBUG"), ("WARNING", "WARNING")]
)
def test_websockets_own_lines_print_from_warning_unless_debugging(level: str, websockets_level: str) -> None:
    """Its per-handshake `connection open` (INFO) repeats uvicorn's `[accepted]` line."""
    loggers = config(level)["loggers"]
    assert isinstance(loggers, dict)
    assert loggers["websockets"]["level"] == websockets_level
    assert loggers["app"]["level"] == loggers["uvicorn"]["level"] == level


def test_a_text_frame_that_is_not_utf8_is_info_without_a_traceback() -> None:
    """uvicorn's own protocol logs it with `exception`; the filter makes it a one-line INFO."""
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        record = logging.LogRecord(
            "uvicorn.error",
            logging.ERROR,
            __file__,
            1,
            "Invalid UTF-8 sequence received from client.",
            None,
            sys.exc_info(),
        )
    assert RedactSecrets().filter(record)
    assert (record.levelno, record.levelname, record.exc_info) == (logging.INFO, "INFO", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /a\x1b[2Jb", "GET /a\\x1b[2Jb"),
        ("x\x00y", "x\\x00y"),
        ("one\nERROR forged", "one\\x0aERROR forged"),
        ("del\x7f c1\x9b sep\u2028", "del\\x7f c1\\x9b sep\\u2028"),
        ("Exception in ASGI application\n", "Exception in ASGI application"),
        ("plain é ü", "plain é ü"),
    ],
    ids=["esc", "nul", "newline", "del-c1-separator", "trailing-newline", "printable"],
)
def test_control_characters_are_escaped(text: str, expected: str) -> None:
    assert escape_controls(text) == expected


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_process_logs_its_last_lines(tmp_path: Path, sig: signal.Signals) -> None:
    """uvicorn ends the process by raising the caught signal again: nothing queued may be lost."""
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    service = ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys_dir)}, log_path=tmp_path / "serve.log")
    with service:
        assert service.process is not None
        pid = service.process.pid
        service.signal(sig)
        code = service.wait(timeout=30)
    # SIGTERM: uvicorn ends the process with the signal; SIGINT: exit status 130, no traceback.
    assert code == (-signal.SIGTERM if sig == signal.SIGTERM else 130)
    assert "Traceback" not in service.log()
    records = service.log().strip().splitlines()
    assert [line.split(": ", 1)[1] for line in records[-3:]] == [
        "Waiting for application shutdown.",
        "Application shutdown complete.",
        f"Finished server process [{pid}]",
    ]
