"""Bounds on what a WebSocket connection may make the edge buffer, over uvicorn's websockets-sansio.

`bounded_protocol(base)` lays these over the edge's protocol class (`app.server.connections`).

uvicorn's protocol parses everything one socket read holds (up to 256 KiB) at once, queues every
message in it for the app without limit, answers every ping at once whatever the write buffer
holds, and builds a fragmented message from any number of continuation frames, pausing only once a
whole message waits for the app. Here:

- what the socket gives is fed to the parser `FEED_BYTES` at a time (the request head uvicorn passes
  on when it upgrades, which holds no frame, whole); once a message waits for the app the rest
  waits unparsed, and reading pauses when the next read arrives (so at most one socket read waits,
  and at most the messages of one piece are queued; a session that takes each message before the
  next arrives never pauses the socket);
- every frame the client sends (text, binary, continuation, ping) takes a token from a bucket at the
  session's frame rate (`REALTIME_MAX_FRAMES_PER_SECOND`) and its payload from one at its byte rate
  (`REALTIME_MAX_BYTES_PER_SECOND`), one second of burst each, a text frame's every `,`, `{` and `[`
  counting `VALUE_BYTES` more (many small values cost the session's checks more than their bytes);
  past either, parsing and reading stop until the bucket is back at zero (back-pressure: the
  client's own socket fills);
- a message in more than `max_fragments` frames closes with 1009, like one over the size limit;
  neither close reason names a limit;
- reading stops while the write buffer is over its high-water mark (the transport's
  `pause_writing`), so a client that does not read cannot make the edge write more;
- a text message that is not UTF-8 closes with 1007 and an INFO line, not an ERROR traceback.

The session core keeps its own limit over whole messages (`app.session.limits.Rate`): that one ends a
session whose excess lasts.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode, Frame

from app.config import Settings
from app.server.refusals import TOO_BIG_REASON
from app.session.limits import VALUE_BYTES, Bucket, values

logger = logging.getLogger(__name__)

MAX_FRAGMENTS = 1024  # frames one message may arrive in
FEED_BYTES = 512  # given to the parser at a time: at most 85 masked frames, so as many queued messages


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with bounded parsing, a frame and byte rate, and reading
    tied to the write buffer."""

    frames_per_second: ClassVar[float]  # set by `bounded_protocol` from Settings
    bytes_per_second: ClassVar[float]
    max_fragments: ClassVar[int] = MAX_FRAGMENTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_paused = False
        self.rate_paused = False
        now = self.loop.time()
        self.frame_tokens = Bucket(self.frames_per_second, now=now)
        self.byte_tokens = Bucket(self.bytes_per_second, now=now)
        self.unread = b""  # read from the socket, not yet parsed: at most one read
        self.fragments = 0  # frames of the message being built

    # Reading ------------------------------------------------------------------------------------

    def _paused(self) -> bool:
        return self.read_paused or self.write_paused or self.rate_paused

    def data_received(self, data: bytes) -> None:
        if not self.handshake_initiated:
            # The request head, as uvicorn's HTTP protocol read it (bounded there) and passes it on
            # when it upgrades: no frame is in it, so it is parsed whole rather than in pieces.
            super().data_received(data)
            return
        if self.unread or len(data) > FEED_BYTES or self._paused() or self.transport.is_closing():
            self.unread = self.unread + data if self.unread else data
            self._feed()
        else:  # one piece, nothing waiting: what `_feed` would do, without its slices
            super().data_received(data)

    def _feed(self) -> None:
        """Parse what was read, a piece at a time, until a pause; the rest waits with reading paused."""
        unread, offset = self.unread, 0
        while offset < len(unread) and not self._paused() and not self.transport.is_closing():
            piece = unread[offset : offset + FEED_BYTES]
            offset += len(piece)
            super().data_received(piece)  # parses it and handles its events, or fails the connection
        self.unread = b"" if self.transport.is_closing() else unread[offset:]
        if self.unread:
            self.transport.pause_reading()

    def _resume_if_free(self) -> None:
        """Parse what waits, then read again, unless a message waits for the app, the write buffer is
        full, or the client is over its rate."""
        if self._paused() or self.transport.is_closing():
            return
        if self.unread:
            self._feed()
        if not (self._paused() or self.unread or self.transport.is_closing() or self.transport.is_reading()):
            self.transport.resume_reading()

    def _take(self, size: int) -> None:
        """Count one frame of `size` payload bytes; past the rate, stop until the buckets refill."""
        now = self.loop.time()
        over = self.frame_tokens.take_at(1, now) | self.byte_tokens.take_at(size, now)  # both take
        if over and not self.rate_paused:
            self.rate_paused = True
            self.transport.pause_reading()
            ready = max(self.frame_tokens.ready_at(), self.byte_tokens.ready_at())
            self.loop.call_at(ready, self._refilled)

    def _refilled(self) -> None:
        self.rate_paused = False
        self._resume_if_free()

    # Writing ------------------------------------------------------------------------------------

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

    # Frames -------------------------------------------------------------------------------------

    def handle_text(self, event: Frame) -> None:
        self._take(frame_weight(event.data))
        self.fragments = 1
        super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        self._take(len(event.data))
        self.fragments = 1
        super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if self.close_sent:
            return
        self._take(frame_weight(event.data))
        self.fragments += 1
        if self.fragments > self.max_fragments:
            self.frames = []
            logger.info("a client sent a message in over %d frames: closed with 1009", self.max_fragments)
            self.conn.fail(CloseCode.MESSAGE_TOO_BIG, TOO_BIG_REASON)
            self.handle_parser_exception()
            return
        super().handle_cont(event)

    def handle_ping(self) -> None:
        super().handle_ping()
        self._take(0)

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, except that text which is not UTF-8 closes with 1007 and an INFO line."""
        self.fragments = 0
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
        # A message waits for the app: parsing stops here, but the socket is not paused yet. Bytes
        # that arrive meanwhile wait unparsed in `unread` (one read), and only then is reading paused
        # (`_feed`). A session that takes each frame before the next arrives, as a live voice session
        # does, costs no pause and resume of the socket per frame.
        self.read_paused = True

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self._resume_if_free()
        return message

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # uvicorn keeps the handshake's response (headers and all) for the connection's life;
            # once it is written nothing reads it again (a uvicorn without it: nothing to free).
            self.response = None  # type: ignore[assignment]
        if self.close_sent and self.unread:  # uvicorn resumed reading for the client's close reply
            self._resume_if_free()


def bounded_protocol(
    base: type[WebSocketsSansIOProtocol], settings: Settings
) -> type[BoundedWebSocketProtocol]:
    """`base` (the edge's WebSocket protocol class) at the session rate of `settings`, for uvicorn's
    `ws=`: `REALTIME_MAX_FRAMES_PER_SECOND` and `REALTIME_MAX_BYTES_PER_SECOND` reach the edge here
    and the session core (`app.session.limits.Rate`) from the same Settings."""

    class BoundedEdgeWebSocketProtocol(BoundedWebSocketProtocol, base):  # type: ignore[valid-type,misc]
        frames_per_second = float(settings.max_frames_per_second)
        bytes_per_second = float(settings.max_bytes_per_second)

    return BoundedEdgeWebSocketProtocol


def frame_weight(data: bytes | bytearray | memoryview) -> int:
    """What a text frame takes from the byte rate: its bytes, plus `VALUE_BYTES` a `,`, `{` or `[`."""
    payload = data if isinstance(data, bytes) else bytes(data)
    return len(payload) + VALUE_BYTES * values(payload)
