"""The edge's WebSocket protocol object, driven without a socket: its direct write (`send_text_now`,
the `realtime.send_text_now` extension) writes only when uvicorn's own send would write at once, and
its reading pauses once a second read arrives while a message waits for the app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.uri import parse_uri

from app.config import Settings
from app.server import connections
from app.server.connections import ConnectionLimits, EdgeWebSocketProtocol, protocol_classes
from app.server.frames import bounded_protocol


class Transport:
    """What the protocol writes to, kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += self.reading
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    unsent = 0  # bytes the transport still holds
    aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        self.aborted = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


async def _never_called(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    raise AssertionError("no app runs here")


def opened(
    loop: asyncio.AbstractEventLoop | None = None,
) -> tuple[EdgeWebSocketProtocol, ClientProtocol, Transport]:
    """A protocol object (the edge's, with the session rate) whose websockets connection is open,
    as after the app's accept."""

    async def build() -> EdgeWebSocketProtocol:
        _, edge = protocol_classes(ConnectionLimits(handshake_timeout=5.0, max_connections=10))
        cls = bounded_protocol(edge, Settings(keys_dir=Path("unused")))
        config = uvicorn.Config(_never_called, log_config=None)
        made = cls(config=config, server_state=ServerState(), app_state={})
        assert isinstance(made, EdgeWebSocketProtocol)
        return made

    protocol = asyncio.run(build()) if loop is None else loop.run_until_complete(build())
    client = ClientProtocol(parse_uri("ws://127.0.0.1/v3/realtime"))
    client.send_request(client.connect())
    protocol.conn.receive_data(b"".join(client.data_to_send()))
    request = protocol.conn.events_received()[0]
    assert isinstance(request, Request)
    protocol.conn.send_response(protocol.conn.accept(request))
    client.receive_data(b"".join(protocol.conn.data_to_send()))
    client.events_received()
    transport = Transport()
    protocol.transport = transport  # type: ignore[assignment]
    protocol.handshake_initiated = protocol.handshake_complete = True
    return protocol, client, transport


def test_writes_a_text_frame_the_client_reads() -> None:
    protocol, client, transport = opened()
    assert protocol.send_text_now('{"type":"audio.delta","audio":"AAAA"}')
    client.receive_data(b"".join(transport.written))
    frames = [event for event in client.events_received() if isinstance(event, Frame)]
    assert [(frame.opcode, frame.data) for frame in frames] == [
        (Opcode.TEXT, b'{"type":"audio.delta","audio":"AAAA"}')
    ]


@pytest.mark.parametrize(
    "state",
    [
        {"handshake_complete": False},  # not accepted yet
        {"close_sent": True},  # the app closed
        {"disconnected": True},  # the client went
        {"initial_response": (403, [], b"")},  # a denial response, not a WebSocket
    ],
)
def test_leaves_the_message_to_uvicorn_when_it_would_not_write_at_once(state: dict[str, Any]) -> None:
    protocol, _, transport = opened()
    for name, value in state.items():
        setattr(protocol, name, value)
    assert not protocol.send_text_now("hello")
    assert transport.written == []


def test_waits_for_the_write_buffer_through_uvicorn() -> None:
    protocol, _, transport = opened()
    protocol.writable.clear()  # the transport said pause_writing: over the high-water mark
    assert not protocol.send_text_now("hello")
    assert transport.written == []
    protocol.writable.set()
    assert protocol.send_text_now("hello")
    assert len(transport.written) == 1


def test_a_closing_connection_is_left_to_uvicorn() -> None:
    protocol, _, transport = opened()
    protocol.conn.send_close(1000, "bye")  # websockets' state is CLOSING: a data frame is refused
    protocol.conn.data_to_send()
    assert not protocol.send_text_now("hello")
    assert transport.written == []


def test_reading_pauses_only_when_a_second_read_arrives_while_a_message_waits() -> None:
    loop = asyncio.new_event_loop()
    try:
        protocol, client, transport = opened(loop)

        def frame(text: str) -> bytes:
            client.send_text(text.encode())
            return b"".join(client.data_to_send())

        protocol.data_received(frame('{"type":"audio.commit"}'))
        assert protocol.queue.qsize() == 1 and transport.reading  # one waits; the socket still reads
        protocol.data_received(frame('{"type":"audio.clear"}'))
        # The second read waits unparsed and reading stops: one message queued, one read held.
        assert protocol.queue.qsize() == 1 and not transport.reading and transport.pauses == 1
        first = loop.run_until_complete(protocol.receive())
        # Taking the first parses the held read: the second now waits, reading still paused.
        assert first["text"] == '{"type":"audio.commit"}'
        assert protocol.queue.qsize() == 1 and not transport.reading
        second = loop.run_until_complete(protocol.receive())
        assert second["text"] == '{"type":"audio.clear"}' and transport.reading
        protocol.data_received(frame('{"type":"audio.commit"}'))
        loop.run_until_complete(protocol.receive())
        assert transport.pauses == 1  # a message taken before the next arrives costs no pause
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("unsent", "lost_meanwhile", "aborted"),
    [
        (65_536, False, True),  # a client that reads nothing: its socket is aborted
        (65_536, True, False),  # it went before the timer: nothing to do
        (0, False, False),  # nothing unwritten: uvicorn's close completes by itself
    ],
)
def test_a_connection_left_with_unwritten_bytes_after_its_app_returned_is_aborted(
    monkeypatch: pytest.MonkeyPatch, unsent: int, lost_meanwhile: bool, aborted: bool
) -> None:
    monkeypatch.setattr(connections, "ABORT_AFTER_SECONDS", 0.01)
    loop = asyncio.new_event_loop()
    try:
        protocol, _, transport = opened(loop)
        transport.unsent = unsent
        task = loop.create_task(asyncio.sleep(0))
        loop.run_until_complete(task)
        protocol.on_task_complete(task)
        if lost_meanwhile:
            protocol.disconnected = True
        loop.run_until_complete(asyncio.sleep(0.05))
        assert transport.aborted is aborted
    finally:
        loop.close()
