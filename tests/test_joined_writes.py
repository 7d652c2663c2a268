"""A response's head goes out with its first body bytes (`app.server.transports.JoinedWrites`): unit
behaviour on a recording transport, and real HTTP/1.1 exchanges with the service on a raw socket."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from app.server.transports import JoinedWrites
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.servers import ServiceProcess


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", tuple(parts)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def is_closing(self) -> bool:
        return False


def joined() -> tuple[JoinedWrites, Recording]:
    recording = Recording()
    return JoinedWrites(cast(asyncio.Transport, recording)), recording


def test_the_head_waits_for_the_body_and_both_leave_in_one_call() -> None:
    transport, recording = joined()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert recording.calls == []
    transport.write(b"body")
    transport.write(b"more")
    assert recording.calls == [
        ("writelines", (b"HTTP/1.1 200 OK\r\n\r\n", b"body")),
        ("write", b"more"),
    ]


def test_100_continue_is_not_held() -> None:
    transport, recording = joined()
    transport.write(JoinedWrites.CONTINUE)
    assert recording.calls == [("write", JoinedWrites.CONTINUE)]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"{}")
    assert recording.calls[1] == ("writelines", (b"HTTP/1.1 200 OK\r\n\r\n", b"{}"))


def test_flush_and_close_send_a_held_head_once() -> None:
    transport, recording = joined()
    transport.flush()
    assert recording.calls == []
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.flush()
    transport.flush()
    assert recording.calls == [("write", b"HTTP/1.1 204 No Content\r\n\r\n")]
    other, calls = joined()
    other.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    other.close()
    assert calls.calls == [("write", b"HTTP/1.1 500 Internal Server Error\r\n\r\n"), ("close", None)]
    assert transport.is_closing() is False  # the rest is the transport's own


# Real exchanges -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, str]]:
    tmp_path = tmp_path_factory.mktemp("joined")
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(
        keys_dir / "api_keys.json", project="proj_j", kind="runtime", now=int(time.time())
    )
    with ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir)}, log_path=tmp_path / "edge.log"
    ).start() as service:
        yield service, api_key


def exchange(port: int, request: bytes, responses: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `request` (possibly several pipelined) and read `responses` answers, each whole."""
    answers: list[tuple[int, dict[str, str], bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        buffer = b""
        while len(answers) < responses:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {answers}"
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            if status == 100:
                continue
            length = 0 if request.startswith(b"HEAD") else int(headers.get("content-length", "0"))
            while len(buffer) < length:
                chunk = sock.recv(65536)
                assert chunk, "connection closed mid-body"
                buffer += chunk
            answers.append((status, headers, buffer[:length]))
            buffer = buffer[length:]
    return answers


def test_head_requests_pipelined_are_each_answered(edge: tuple[ServiceProcess, str]) -> None:
    service, _ = edge
    request = b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 3
    answers = exchange(service.port, request, 3)
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(body == b"" for _, _, body in answers)


def test_keep_alive_mints_and_expect_100_continue(edge: tuple[ServiceProcess, str]) -> None:
    service, api_key = edge
    body = json.dumps({"ttl_seconds": 60}).encode()
    one = (
        f"POST /v3/realtime-sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    request = one + b"\r\n" + body + one + b"Expect: 100-continue\r\n\r\n" + body
    answers = exchange(service.port, request, 2)
    assert [status for status, _, _ in answers] == [200, 200]
    for _, headers, payload in answers:
        assert headers["content-type"] == "application/json"
        assert json.loads(payload)["client_secret"].count(".") == 4


def test_a_refused_mint_is_answered_whole(edge: tuple[ServiceProcess, str]) -> None:
    service, _ = edge
    request = b"POST /v3/realtime-sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    [(status, _, payload)] = exchange(service.port, request, 1)
    assert status == 401
    assert json.loads(payload)["error"]["code"] == "missing_credentials"
