"""Hostile input that once got past the edge, each through a real uvicorn process.

Deeply nested and non-JSON frames, text that is not UTF-8, tickets hidden in malformed queries,
percent-encoded query keys, deep or odd session configs, a bound config read back through
`/config`, a forged `Host`, huge member names, the dev route from another address, provider key
fragments. Every answer is the documented code, and the log has no ERROR line, no traceback and no
ticket.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from app.upstreams.turn import HIDDEN
from tests.rawsocket import TEXT, RawClient, masked
from tests.servers import ServiceProcess

DEADLINE = 30.0
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
TEXT_ONLY = {"model": "openai/gpt-realtime-2", "modalities": ["text"]}
CONTINUATION = 0x0


@dataclass
class Edge:
    service: ServiceProcess
    api_key: str

    @property
    def port(self) -> int:
        return self.service.port

    def mint_response(self, body: Any = None, *, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            self.service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.api_key}", **(headers or {})},
            json={} if body is None else body,
            timeout=DEADLINE,
        )

    def mint(self, config: dict[str, Any] | None = None) -> str:
        response = self.mint_response({"config": config} if config else {})
        assert response.status_code == 200, response.text
        token: str = response.json()["client_secret"]
        return token

    def raw(self, ticket: str | None = None) -> RawClient:
        return RawClient(self.port, ticket or self.mint(), timeout=DEADLINE)

    def log(self) -> str:
        return self.service.log()


def start_edge(directory: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> Edge:
    keys_dir = directory / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(
        keys_dir / "api_keys.json", project="proj_hard", kind="runtime", now=int(time.time())
    )
    service = ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir), **env}, log_path=directory / "serve.log", args=args
    )
    return Edge(service, api_key)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    running = start_edge(tmp_path_factory.mktemp("hardening"), {"REALTIME_DEV": "true"})
    with running.service:
        yield running


@pytest.fixture
def quiet(edge: Edge) -> Iterator[None]:
    """The test leaves no ERROR line and no traceback in the edge's log."""
    offset = len(edge.log())
    yield
    written = edge.service.settled_log()[offset:]
    assert " ERROR " not in written and "Traceback" not in written, written[-3000:]


def started(client: RawClient) -> None:
    client.send_event({"type": "session.start", "config": TEXT_ONLY})
    assert next_event(client)["type"] == "session.started"


def next_event(client: RawClient) -> dict[str, Any]:
    while True:
        opcode, payload = client.receive()
        assert opcode == TEXT, (opcode, payload[:100])
        event: dict[str, Any] = json.loads(payload)
        return event


def still_answers(client: RawClient) -> None:
    """The session goes on: a text turn gets its echo."""
    client.send_event({"type": "text.input", "text": "still here"})
    client.send_event({"type": "response.create"})
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != "response.completed":
        events.append(next_event(client))
    assert "still here" in "".join(event.get("delta", "") for event in events)


def fragment(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """One masked frame with the FIN bit as given (payloads under 126 bytes)."""
    mask = os.urandom(4)
    return (
        struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload)) + mask + masked(payload, mask)
    )


def error_code(event: dict[str, Any]) -> str:
    assert event["type"] == "error", event
    code: str = event["error"]["code"]
    return code


# 1, 5. Frames that are not JSON the protocol takes --------------------------------------------------

DEEP = "[" * 100_000
DEEP_UPDATE = '{"type":"session.update","config":' + "[" * 100_000
NAN_START = '{"type":"session.start","config":{"model":"openai/gpt-realtime-2","temperature":NaN}}'
NAN_TOOL = '{"type":"session.update","config":{"tools":[{"name":"a","parameters":{"a":NaN}}]}}'
INFINITY = '{"type":"text.input","text":"x","n":Infinity}'


@pytest.mark.parametrize(
    "frame", [DEEP, DEEP_UPDATE, NAN_START, INFINITY], ids=["deep", "deep-update", "nan", "infinity"]
)
def test_a_bad_first_frame_is_session_not_started(edge: Edge, quiet: None, frame: str) -> None:
    client = edge.raw()
    try:
        client.send(TEXT, frame.encode())
        events, close_code = client.events_until_close()
    finally:
        client.close()
    assert [error_code(event) for event in events] == ["session_not_started"]
    assert close_code == 1008


@pytest.mark.parametrize(
    "frame", [DEEP, DEEP_UPDATE, NAN_TOOL, INFINITY], ids=["deep", "deep-update", "nan-tool", "infinity"]
)
def test_a_bad_frame_after_the_start_is_a_non_fatal_invalid_event(
    edge: Edge, quiet: None, frame: str
) -> None:
    client = edge.raw()
    try:
        started(client)
        client.send(TEXT, frame.encode())
        assert error_code(next_event(client)) == "invalid_event"
        still_answers(client)
    finally:
        client.close()
    assert "RecursionError" not in edge.service.settled_log()


def test_a_deep_frame_in_a_thousand_fragments_is_a_non_fatal_invalid_event(edge: Edge, quiet: None) -> None:
    client = edge.raw()
    try:
        started(client)
        data = fragment(TEXT, b"[", fin=False)
        data += b"".join(fragment(CONTINUATION, b"[", fin=False) for _ in range(998))
        data += fragment(CONTINUATION, b"[", fin=True)
        client.sock.sendall(data)
        assert error_code(next_event(client)) == "invalid_event"
        still_answers(client)
    finally:
        client.close()


# 2. Text that is not UTF-8 --------------------------------------------------------------------------


def test_text_that_is_not_utf8_closes_1007_without_an_error_line(edge: Edge, quiet: None) -> None:
    offset = len(edge.log())
    client = edge.raw()
    try:
        started(client)
        client.send(TEXT, b'{"type":"text.input","text":"\xff\xfe"}')
        _, close_code = client.events_until_close()
    finally:
        client.close()
    assert close_code == 1007
    deadline = time.monotonic() + DEADLINE
    line = " INFO app.server.frames: a client sent a text message that is not UTF-8: closed with 1007"
    while line not in edge.log()[offset:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in edge.log()[offset:]


# 3. A ticket in a malformed query never reaches the log -----------------------------------------------


def handshake(port: int, target: str, headers: tuple[str, ...] = ()) -> tuple[int, str | None]:
    """A WebSocket upgrade on a raw socket: the status, and the error code of a refusal."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WS_KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, None
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, body
            body += chunk
    return status, json.loads(body)["error"]["code"]


def redemptions(log: str) -> int:
    return log.count(" redemption ")


def wait_for_redemptions(edge: Edge, count: int) -> str:
    deadline = time.monotonic() + DEADLINE
    while redemptions(edge.log()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    log = edge.service.settled_log()  # the access line of the last request too
    assert redemptions(log) >= count, log[-2000:]
    return log


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ('?ticket="{t}', "invalid_ticket"),
        ("?ticket='{t}", "invalid_ticket"),
        ("?ticket[]={t}", "missing_credentials"),
        ("?ticket.={t}", "missing_credentials"),
        ("?a=b?ticket={t}", "missing_credentials"),
        ("?x={t}", "missing_credentials"),
    ],
    ids=["double-quote", "single-quote", "brackets", "dot", "second-question-mark", "other-key"],
)
def test_a_ticket_in_a_malformed_query_is_not_logged(edge: Edge, quiet: None, query: str, code: str) -> None:
    ticket = edge.mint()
    before = redemptions(edge.log())
    assert handshake(edge.port, "/v3/realtime" + query.format(t=ticket)) == (401, code)
    log = wait_for_redemptions(edge, before + 1)
    for part in ticket.split("."):
        if len(part) >= 8:
            assert part not in log
    # The ticket was live: had the log kept it, its reader could have used it.
    assert handshake(edge.port, "/v3/realtime", (f"Sec-WebSocket-Protocol: opper-ticket.{ticket}",))[0] == 101


# 4. The query key `ticket` however it is encoded ----------------------------------------------------


@pytest.mark.parametrize(
    ("query", "protocol", "expected"),
    [
        ("?%74icket={b}", False, (101, None)),
        ("?%74icket={b}&x=ticket", False, (101, None)),
        ("?%74%69%63%6B%65%74={b}", False, (101, None)),
        ("?%74icket={b}", True, (400, "ambiguous_ticket")),
        ("?%74icket={a}", True, (101, None)),
        ("?%74icket={a}&ticket={b}", False, (400, "ambiguous_ticket")),
        ("?%54icket={b}", False, (401, "missing_credentials")),
        ("?x=%74icket&y={b}", False, (401, "missing_credentials")),
    ],
    ids=[
        "encoded-alone",
        "encoded-and-word-elsewhere",
        "fully-encoded",
        "encoded-and-other-subprotocol",
        "encoded-and-same-subprotocol",
        "encoded-and-plain-differ",
        "other-case",
        "encoded-value-only",
    ],
)
def test_the_ticket_key_counts_however_it_is_encoded(
    edge: Edge, quiet: None, query: str, protocol: bool, expected: tuple[int, str | None]
) -> None:
    a, b = edge.mint(), edge.mint()
    headers = (f"Sec-WebSocket-Protocol: opper-ticket.{a}",) if protocol else ()
    assert handshake(edge.port, "/v3/realtime" + query.format(a=a, b=b), headers) == expected


# 6. Session configs nest no deeper than mint bodies --------------------------------------------------


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_deep_config_is_invalid_config_at_start_and_update(edge: Edge, quiet: None) -> None:
    client = edge.raw()
    try:
        tools = [{"name": "t", "parameters": deep(100)}]
        client.send_event({"type": "session.start", "config": {**TEXT_ONLY, "tools": tools}})
        event = next_event(client)
        assert error_code(event) == "invalid_config" and event["error"]["message"].startswith("config.tools:")
        started(client)  # the failed start is not fatal
        client.send_event({"type": "session.update", "config": {"tools": tools}})
        assert error_code(next_event(client)) == "invalid_config"
        # A schema well within the limit passes.
        client.send_event(
            {"type": "session.update", "config": {"tools": [{"name": "t", "parameters": deep(20)}]}}
        )
        assert next_event(client)["type"] == "session.updated"
    finally:
        client.close()


# 7. `/config` does not show bound instructions and tools -------------------------------------------


def test_config_command_hides_bound_instructions_and_tools(edge: Edge, quiet: None) -> None:
    bound = {
        **TEXT_ONLY,
        "instructions": "Bound-instructions-never-shown",
        "tools": [{"name": "bound_tool_name", "description": "Bound-description-never-shown"}],
    }
    client = edge.raw(edge.mint(bound))
    try:
        client.send_event({"type": "session.start", "config": {"instructions": "mine"}})
        assert next_event(client)["type"] == "session.started"
        client.send_event({"type": "text.input", "text": "/config"})
        client.send_event({"type": "response.create"})
        text = ""
        while (event := next_event(client))["type"] != "response.completed":
            text += event.get("delta", "")
    finally:
        client.close()
    shown = json.loads(text)
    assert shown["instructions"] == HIDDEN and shown["tools"] == HIDDEN
    assert shown["model"] == TEXT_ONLY["model"]
    assert "never-shown" not in text and "bound_tool_name" not in text and "mine" not in text


# 8, 9. The mint: `Host` and member names --------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ['x"><script>', "a b", "x/y", "x@y", "x?y", "", "h" * 300],
    ids=["markup", "space", "slash", "at", "query", "empty", "long"],
)
def test_a_host_that_is_not_a_host_name_is_refused(edge: Edge, quiet: None, host: str) -> None:
    response = edge.mint_response(headers={"Host": host})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["details"] == {"field": "host"}
    assert "<script>" not in response.text


@pytest.mark.parametrize(
    "host",
    ["example.com:8443", "10.0.0.1", "[::1]:8000", "edge_1"],
    ids=["name-port", "ipv4", "ipv6", "underscore"],
)
def test_a_host_name_builds_the_ws_url(edge: Edge, quiet: None, host: str) -> None:
    response = edge.mint_response(headers={"Host": host})
    assert response.status_code == 200, response.text
    assert response.json()["ws_url"].startswith(f"ws://{host}/v3/realtime?ticket=")


@pytest.mark.parametrize(
    ("body", "code", "member"),
    [
        ({"f" * 10_000: 1}, "invalid_request", "field"),
        ({"config": {"f" * 10_000: 1}}, "invalid_config", "field"),
    ],
    ids=["top-level", "config"],
)
def test_a_huge_unknown_member_name_is_cut_in_the_error(
    edge: Edge, quiet: None, body: dict[str, Any], code: str, member: str
) -> None:
    response = edge.mint_response(body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["details"][member] == "f" * 64 + "..."
    assert len(error["message"]) < 300


# 10. The dev route: loopback peers only, straight, under one loopback Host ----------------------------


def dev_ticket(port: int, headers: tuple[str, ...], *, address: str = "127.0.0.1") -> int:
    lines = ["POST /dev/ticket HTTP/1.1", *headers, "Content-Length: 0", "Connection: close"]
    with socket.create_connection((address, port), timeout=DEADLINE) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    return int(received.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (("Host: localhost",), 200),
        (("Host: localhost", "Host: localhost"), 404),
        (("Host: localhost", "Host: evil.example"), 404),
        (("Host: localhost", "X-Forwarded-For: 127.0.0.1"), 404),
        (("Host: localhost", "X-Forwarded-Proto: http"), 404),
        (("Host: localhost", "Forwarded: for=127.0.0.1"), 404),
    ],
    ids=["loopback", "two-hosts", "two-hosts-differ", "forwarded-for", "forwarded-proto", "forwarded"],
)
def test_the_dev_route_refuses_proxied_and_doubled_requests(
    edge: Edge, quiet: None, headers: tuple[str, ...], status: int
) -> None:
    assert dev_ticket(edge.port, headers) == status


def outside_address() -> str | None:
    """An address of this machine that is not loopback (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


def test_the_dev_route_refuses_a_peer_that_is_not_loopback(tmp_path: Path) -> None:
    address = outside_address()
    assert address is not None, "this machine has no address besides loopback"
    public = start_edge(tmp_path, {"REALTIME_DEV": "true"}, args=("--host", "0.0.0.0"))  # noqa: S104
    with public.service:
        assert dev_ticket(public.port, ("Host: localhost",), address=address) == 404
        assert dev_ticket(public.port, ("Host: localhost",)) == 200
    log = public.log()
    assert " ERROR " not in log and "Traceback" not in log
