"""A lean client: hand-written HTTP/1.1 requests, WebSocket upgrade and frames over asyncio streams.

Client frames are masked with an all-zero key (a valid mask that costs no XOR), so the client spends
as little CPU as possible and the server's cost dominates what is measured.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

UPGRADE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # any 16-byte nonce will do; the server only hashes it
TEXT, CLOSE = 0x1, 0x8


class ProtocolError(Exception):
    """The server answered something the benchmark did not expect."""


def post_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def upgrade_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {UPGRADE_KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """A final client frame, masked with the zero key."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + b"\0\0\0\0" + payload


def event_frame(event: dict[str, Any]) -> bytes:
    return frame(json.dumps(event, separators=(",", ":")).encode())


CLOSE_FRAME = frame(struct.pack("!H", 1000), CLOSE)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame (the server sends no fragments here): (opcode, payload)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


async def read_event(reader: asyncio.StreamReader) -> dict[str, Any]:
    opcode, payload = await read_frame(reader)
    if opcode != TEXT:
        raise ProtocolError(f"expected a text frame, got opcode {opcode}: {payload[2:]!r}")
    event: dict[str, Any] = json.loads(payload)
    return event


class Connection:
    """One upgraded WebSocket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, path: str, headers: dict[str, str]) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(upgrade_request(host, port, path, headers))
        head = await reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"101":
            writer.close()
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise ProtocolError(f"upgrade refused: {status}")
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self) -> dict[str, Any]:
        return await read_event(self.reader)

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            event = await self.receive()
            if event.get("type") == kind:
                return event
            if event.get("type") in ("error", "session.terminating") and kind != "error":
                raise ProtocolError(f"expected {kind}, got {event}")

    def close(self) -> None:
        """Send a close frame and drop the socket without waiting for the server's answer."""
        try:
            self.writer.write(CLOSE_FRAME)
        finally:
            self.writer.close()
