"""uvicorn's protocol classes with bounds on what one connection may hold before the app sees it.

uvicorn (httptools) waits for a request for as long as the client likes once a byte has arrived, keeps
every header byte it is sent, and its WebSocket implementation leaves a handshake that websockets
refused (request line over 8 KiB, a header it cannot parse) unanswered, or answers with a plain-text
body that quotes the offending header. These subclasses add, per connection:

- a deadline (`REALTIME_HANDSHAKE_TIMEOUT_SECONDS`): armed when the connection opens and whenever the
  server waits for the client's next request; disarmed once a request is fully read or upgraded to a
  WebSocket. When it passes, the connection is closed.
- a cap on open connections per process (`REALTIME_MAX_CONNECTIONS`), HTTP and WebSocket together:
  beyond it a request or upgrade is answered `503 too_many_connections` without running the app
  (and must arrive within a second); past the cap plus `OVERFLOW`, connections are closed unread.
- a bound on a request's head (request line and headers): over `MAX_HEAD_BYTES` it is answered 431.
- JSON error bodies, never echoing the request, for handshakes refused before the app is called
  (`app.server.refusals`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from app.edge.realtime import SEND_NOW_EXTENSION, WAITING_EXTENSION
from app.server.refusals import RefusingServerProtocol, head_too_large, over_capacity, refusal_body
from app.server.transports import JoinedWrites
from app.waiters import Flag, MessageQueue

logger = logging.getLogger(__name__)
#: The logger of websockets' own connection objects (websockets' own name for a server's lines).
#: uvicorn hands them `uvicorn.error`, so every handshake printed websockets' `connection open`
#: beside uvicorn's `"WebSocket /v3/realtime" [accepted]`: the same news twice, and a line costs the
#: event loop about 6 µs. At the INFO level its INFO lines are left out (`app.logs.config`); its
#: warnings and errors still print, and at DEBUG everything it logs.
CONNECTION_LOGGER = logging.getLogger("websockets.server")

#: Request line plus headers. websockets refuses any single line over 8 KiB on its own.
MAX_HEAD_BYTES = 64 * 1024
#: Connections past the cap are still accepted so that a request can be answered 503; they get this
#: long to send it. Past the cap plus `OVERFLOW` a new connection is closed at once, unread: the
#: descriptors kept in reserve (for Redis, upstreams, files) are not for clients.
OVERFLOW_DEADLINE_SECONDS = 1.0
OVERFLOW = 128
#: After refusing a request mid-upload, how long its remaining bytes are read and dropped: closing a
#: socket with unread data makes the kernel send a reset, and the client would lose the answer.
LINGER_SECONDS = 1.0


#: How long a WebSocket may stay open once its app has returned: uvicorn's close handshake timeout
#: (10 s) and a little more, so that a close that completes is never cut short.
ABORT_AFTER_SECONDS = 12.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection bounds, from Settings (`app.server.runner.connection_limits`)."""

    handshake_timeout: float
    max_connections: int


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with JSON refusals, answered parse failures and the cap."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # websockets' connection object, built again as ours (our refusals, websockets' own logger),
        # with the extensions uvicorn chose and the configured size limit.
        self.conn = RefusingServerProtocol(
            extensions=self.conn.available_extensions,
            max_size=self.config.ws_max_size,
            logger=CONNECTION_LOGGER,
        )
        # The receive queue and the writable flag, without the deques asyncio's carry: an idle
        # session holds both for its whole life (app/waiters.py).
        self.queue = MessageQueue()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets refused the request before it was one (request line or a header too long,
            # unparsable): its answer is queued, but uvicorn only writes answers to parsed requests.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            self.transport.close()

    def handle_connect(self, event: Any) -> None:
        if len(self.connections) > self.limits.max_connections:
            self.app = over_capacity
        super().handle_connect(event)
        # Read once, to build the scope: not kept for the connection's life.
        self.request = None  # type: ignore[assignment]
        if self.response.status_code != 101:
            return  # refused by websockets: answered and closed, no app runs
        # The session loop asks whether a message already waits (`app.edge.realtime`), so that it yields
        # only when it would not suspend anyway; offered as an ASGI extension of this server.
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[WAITING_EXTENSION] = self.message_waiting
        extensions[SEND_NOW_EXTENSION] = self.send_text_now

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        # The app is done with the connection, and uvicorn closes it with `transport.close()`, at
        # once or after its close handshake's timeout. asyncio's close waits for the write buffer
        # to drain: a client that never reads would hold the socket, its kernel buffers and a
        # connection slot for good. With bytes still unwritten, what is still open
        # `ABORT_AFTER_SECONDS` later is aborted (an empty buffer closes at once: no timer).
        if not self.disconnected and self.transport.get_write_buffer_size():
            self.loop.call_later(ABORT_AFTER_SECONDS, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.disconnected:
            logger.info("a WebSocket client read nothing after its session ended: connection aborted")
            self.transport.abort()

    def message_waiting(self) -> bool:
        """Whether a received message is queued for the app (its next receive returns at once)."""
        return not self.queue.empty()

    def send_text_now(self, text: str) -> bool:
        """Write one text message at once, as uvicorn's `send` of a `websocket.send` does, when
        nothing would make that send wait or refuse: accepted, no close sent, the peer still there,
        the write buffer under its high-water mark. False when something would: then the app sends
        through ASGI, which waits or raises as uvicorn does. Offered as an ASGI extension; a live
        session's audio, both ways, is most of what the edge writes (docs/decisions.md)."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
        ):
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a per-request deadline, a head-size bound and the cap."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._heads = 0  # request heads completed on this connection
        self._head_size = 0  # bytes of the last complete head (for a first head, a bound on them)
        self._chunk = 0  # bytes of the read being parsed
        self._in_head = True  # reading a request line and headers
        self._in_message = False  # reading a request (head or body)
        self._refused = False
        open_connections = len(self.connections)
        if open_connections > self.limits.max_connections + OVERFLOW:
            self.transport.abort()
            return
        self._arm(OVERFLOW_DEADLINE_SECONDS if open_connections > self.limits.max_connections else None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: drop what the client is still sending
        counting, heads = self._in_head, self._heads
        self._chunk = len(data)
        super().data_received(data)
        # Only a chunk that left the same head unfinished counts toward it (one that completed a head
        # and began the next leaves the next one uncounted: at most one read's worth).
        if counting and heads == self._heads and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what httptools cannot parse is plain text; ours is the JSON error body.
        self._refuse(400)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True

    def on_headers_complete(self) -> None:
        read, self._in_head, self._head_bytes = self._head_bytes + self._chunk, False, 0
        self._heads += 1
        # A head that arrived in one read was not counted by `data_received`: measure it here, unless
        # it is the connection's first, which lies within what was read, counted or in this read.
        if self._heads == 1 and read <= MAX_HEAD_BYTES:
            self._head_size = read  # a bound on its size, and under the cap
        else:
            self._head_size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        # uvicorn runs `self.app` for this request; a WebSocket upgrade is counted by its own protocol.
        if self._head_size > MAX_HEAD_BYTES:
            self.app = head_too_large
        elif len(self.connections) > self.limits.max_connections:
            self.app = over_capacity
        else:
            self.app = self.config.loaded_app
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle
            joined = JoinedWrites(self.transport)
            completed = cycle.on_response

            def on_response() -> None:
                joined.flush()  # a response with no body bytes (HEAD, an empty body)
                completed()

            cycle.transport = joined  # type: ignore[assignment]
            cycle.on_response = on_response

    def on_message_complete(self) -> None:
        self._in_head, self._in_message = True, False
        if self.cycle is not None and self.cycle.response_complete:
            self._arm()  # answered before it was fully read: now waiting for the next request
        else:
            self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the client's next request (uvicorn armed its keep-alive timer), or for the rest
        # of one already begun: the client has the handshake timeout to deliver it.
        if not self.transport.is_closing() and (self.timeout_keep_alive_task is not None or self._in_message):
            self._arm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # from here the WebSocket protocol and the app own the connection
        if self._head_size > MAX_HEAD_BYTES:
            self._refuse(431)
            return
        super().handle_websocket_upgrade()

    def _arm(self, seconds: float | None = None) -> None:
        self._disarm()
        timeout = (
            self.limits.handshake_timeout if seconds is None else min(seconds, self.limits.handshake_timeout)
        )
        self._deadline = self.loop.call_later(timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.debug("closing a connection that sent no complete request in time")
            self.transport.close()

    def _refuse(self, status: int) -> None:
        self._disarm()
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no room for a second one
            return
        body = refusal_body(status)
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def protocol_classes(limits: ConnectionLimits) -> tuple[type[EdgeHttpProtocol], type[EdgeWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes for uvicorn's `http=` and `ws=`, bound to `limits`."""

    class Http(EdgeHttpProtocol):
        pass

    class WebSocketProtocol(EdgeWebSocketProtocol):
        pass

    Http.limits = WebSocketProtocol.limits = limits
    return Http, WebSocketProtocol
