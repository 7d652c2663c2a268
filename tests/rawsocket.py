"""A WebSocket client on a plain socket, for clients no library would be: ones that never read,
flood pings, or send text that is not UTF-8 (RFC 6455 framing, client side, masked)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    return header + mask + masked(payload, mask)


def masked(payload: bytes, mask: bytes) -> bytes:
    """`payload` XOR the repeated 4-byte `mask` (whole-number XOR: fast for megabytes)."""
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    size = len(payload)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


class RawClient:
    """A client socket after a successful upgrade; `receive_buffer` shrinks the socket's buffer."""

    def __init__(
        self, port: int, ticket: str, *, receive_buffer: int | None = None, timeout: float = 10
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET /v3/realtime HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: opper-ticket.{ticket}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "the server closed during the handshake"
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(frame(opcode, payload))

    def send_event(self, event: dict[str, Any]) -> None:
        self.send(TEXT, json.dumps(event).encode())

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def receive(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): (opcode, payload)."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(length)

    def events_until_close(self) -> tuple[list[dict[str, Any]], int | None]:
        """Every event up to the server's close frame, and its close code (None: no close frame)."""
        events: list[dict[str, Any]] = []
        while True:
            try:
                opcode, payload = self.receive()
            except (EOFError, ConnectionResetError):
                return events, None
            if opcode == CLOSE:
                return events, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if opcode == TEXT:
                events.append(json.loads(payload))

    def close(self) -> None:
        self.sock.close()
