"""A response's transport that sends its head together with the first body bytes."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar


class JoinedWrites:
    """A response's transport that sends its head together with the first body bytes.

    uvicorn writes a response's status line and headers when the app starts the response and its
    body in a second write: two `send()` calls, two TCP segments and two wake-ups of the client for
    one small answer (a quarter of a mint's server time went to the two calls). The head is held
    until the next write (or `close()`, or the end of the response) and sent with it. A `100 Continue`
    line is not a response head and goes out at once. Everything else is the transport's own.
    """

    __slots__ = ("_head", "_started", "transport")

    CONTINUE: ClassVar[bytes] = b"HTTP/1.1 100 Continue\r\n\r\n"

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self.transport.writelines((head, data))  # one vectored write, the body not copied
        elif not self._started and data != self.CONTINUE:
            self._started = True
            self._head = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)
