"""Bounds on what a WebSocket connection may make the edge buffer, over uvicorn's websockets-sansio.

`bounded_protocol(base)` lays these over the edge's protocol class (`app.connections`).

uvicorn's protocol answers every ping at once and writes it whatever the write buffer holds, and
stops reading only while a data message waits for the app. A client that sends pings and never
reads the pongs grows the edge's memory without end. Here:

- reading stops while the write buffer is over its high-water mark (the transport's
  `pause_writing`), so a client that does not read cannot make the edge write more;
- ping frames count against a token bucket at the session's frame rate
  (`REALTIME_MAX_FRAMES_PER_SECOND`, one second of burst); past it, reading pauses until the bucket
  has refilled;
- a text message that is not UTF-8 closes with 1007 and an INFO line, not an ERROR traceback.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode

from app.limits import Bucket

logger = logging.getLogger(__name__)


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with reading tied to the write buffer and a ping rate."""

    pings_per_second: ClassVar[float] = 200.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_paused = False
        self.ping_paused = False
        self.pings = Bucket(self.pings_per_second, now=self.loop.time())

    def _resume_if_free(self) -> None:
        """Read again unless a message waits for the app, the write buffer is full, or pings are over."""
        if (
            not (self.read_paused or self.write_paused or self.ping_paused)
            and not self.transport.is_closing()
        ):
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_paused = False
        self._resume_if_free()

    def shutdown(self) -> None:
        """Server shutdown: a client that reads nothing cannot hold the process open."""
        super().shutdown()
        if self.write_paused:
            self.transport.abort()  # close() would wait for a write buffer the client never drains

    def handle_ping(self) -> None:
        super().handle_ping()
        now = self.loop.time()
        self.pings.refill(now)
        self.pings.take(1)
        if self.pings.tokens < 0 and not self.ping_paused:
            self.ping_paused = True
            self.transport.pause_reading()
            self.loop.call_at(self.pings.ready_at(), self._pings_refilled)

    def _pings_refilled(self) -> None:
        self.ping_paused = False
        self._resume_if_free()

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, except that text which is not UTF-8 closes with 1007 and an INFO line."""
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            logger.info("a client sent a text message that is not UTF-8: closed with 1007")
            self.conn.fail(CloseCode.INVALID_DATA, "text message is not UTF-8")
            self.handle_parser_exception()
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self._resume_if_free()
        return message


def bounded_protocol(
    base: type[WebSocketsSansIOProtocol], *, pings_per_second: float
) -> type[BoundedWebSocketProtocol]:
    """`base` (the edge's WebSocket protocol class) with these bounds, for uvicorn's `ws=`."""
    return type(
        "BoundedEdgeWebSocketProtocol",
        (BoundedWebSocketProtocol, base),
        {"pings_per_second": float(pings_per_second)},
    )
