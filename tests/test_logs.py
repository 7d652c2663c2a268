"""The service's log handler: lines of one event-loop pass leave in one write, in order, none lost."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.logs import Format, LineWriter, write_through
from app.rotation import ensure_keys
from tests.servers import ServiceProcess

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Recorder(io.StringIO):
    """A stream that remembers each write separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


@pytest.fixture
def stream() -> Recorder:
    return Recorder()


@pytest.fixture
def logger(stream: Recorder) -> Iterator[logging.Logger]:
    handler = LineWriter(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log
    log.removeHandler(handler)
    handler.close()


def lines(stream: Recorder) -> list[str]:
    return "".join(stream.writes).splitlines()


def test_lines_of_one_loop_pass_leave_together_at_its_end(logger: logging.Logger, stream: Recorder) -> None:
    async def main() -> tuple[list[str], list[str]]:
        logger.info("one")
        logger.info("two %d", 2)
        logger.info("three")
        during = list(stream.writes)
        await asyncio.sleep(0)  # the pass ends; the flush runs before this task resumes
        return during, list(stream.writes)

    during, after = asyncio.run(main())
    assert during == []
    assert after == ["INFO one\nINFO two 2\nINFO three\n"]


def test_a_warning_is_written_at_once_after_what_was_queued(logger: logging.Logger, stream: Recorder) -> None:
    async def main() -> list[str]:
        logger.info("before")
        logger.warning("trouble")
        return list(stream.writes)

    assert asyncio.run(main()) == ["INFO before\nWARNING trouble\n"]


def test_off_the_loop_a_line_is_written_at_once(logger: logging.Logger, stream: Recorder) -> None:
    logger.info("no loop here")
    assert lines(stream) == ["INFO no loop here"]

    thread = threading.Thread(target=logger.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert lines(stream) == ["INFO no loop here", "INFO from a thread"]


def test_a_loop_that_stops_with_a_flush_due_loses_nothing(logger: logging.Logger, stream: Recorder) -> None:
    loop = asyncio.new_event_loop()

    async def log_and_stop() -> None:
        logger.info("last words")
        loop.stop()

    loop.create_task(log_and_stop())
    loop.run_forever()  # stops in the pass that logged: the scheduled flush never runs there
    loop.close()
    assert stream.writes == []

    async def next_loop() -> None:
        logger.info("next loop")

    asyncio.run(next_loop())
    assert lines(stream) == ["INFO last words", "INFO next loop"]


def test_closing_the_handler_flushes_the_queue(stream: Recorder) -> None:
    handler = LineWriter(stream)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "queued", None, None)

    loop = asyncio.new_event_loop()

    async def log_and_stop() -> None:
        handler.handle(record)
        loop.stop()

    loop.create_task(log_and_stop())
    loop.run_forever()  # stops with the flush still due
    loop.close()
    assert stream.writes == []
    handler.close()  # what logging.shutdown does at exit
    assert lines(stream) == ["queued"]


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.5, 1_700_000_001.999, 1_700_000_059.0])
def test_the_cached_timestamp_matches_the_standard_format(created: float) -> None:
    ours, standard = Format(FORMAT), logging.Formatter(FORMAT)
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    ours.format(logging.LogRecord("app.x", logging.INFO, __file__, 1, "warm", None, None))
    assert ours.format(record) == standard.format(record)


def test_write_through_writes_the_queue_and_every_later_line_at_once(
    logger: logging.Logger, stream: Recorder
) -> None:
    async def main() -> list[str]:
        logger.info("queued")
        write_through()
        logger.info("after")
        return list(stream.writes)

    assert asyncio.run(main()) == ["INFO queued\n", "INFO after\n"]


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
