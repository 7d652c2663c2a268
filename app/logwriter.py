"""The log writer: lines formatted where they are logged, written to the stream by a thread of its own."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import time
import weakref
from typing import Any, TextIO

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
            fields = {"name": "app.logs", "msg": note, "levelno": logging.WARNING, "levelname": "WARNING"}
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
