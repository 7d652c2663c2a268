"""The edge against hostile or broken clients, through real uvicorn processes and raw sockets.

Slow and partial connections, oversize request heads, the connection cap, compression, handshakes
refused before the app, static paths, mint bodies, the dev route's Host check, and what the log
shows of it all. None of it may reach a 500, a hang, an ERROR line or a secret in the log.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.config import Settings
from app.server import runner as server
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.servers import ServiceProcess

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MODEL = "openai/gpt-realtime-2"
DEADLINE = 30.0  # generous: the machine is shared and noisy; every wait polls up to this


@dataclass
class Edge:
    service: ServiceProcess
    api_key: str

    @property
    def port(self) -> int:
        return self.service.port

    def mint(self) -> str:
        response = httpx.post(
            self.service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json={},
            timeout=DEADLINE,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["client_secret"]
        return token


def start_edge(
    directory: Path,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    nofile: int | None = None,
) -> tuple[Edge, ServiceProcess]:
    keys_dir = directory / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(
        keys_dir / "api_keys.json", project="proj_io", kind="runtime", now=int(time.time())
    )
    service = ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir), **(env or {})},
        log_path=directory / "serve.log",
        args=args,
        nofile=nofile,
    )
    return Edge(service, api_key), service


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """One edge for the module, with a 1 s handshake timeout and the dev route on."""
    running, service = start_edge(
        tmp_path_factory.mktemp("edge"),
        env={"REALTIME_HANDSHAKE_TIMEOUT_SECONDS": "1", "REALTIME_DEV": "true"},
    )
    with service:
        yield running


@pytest.fixture
def quiet(edge: Edge) -> Iterator[None]:
    """The test's requests leave no ERROR line and no traceback in the edge's log."""
    offset = len(edge.service.log())
    yield
    assert_quiet(edge.service.settled_log()[offset:])


def assert_quiet(log: str) -> None:
    assert " ERROR " not in log and "Traceback" not in log, log


# Raw HTTP ---------------------------------------------------------------------------------------


def upgrade(target: str = "/v3/realtime", headers: tuple[str, ...] = (), *, end: bool = True) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WS_KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n" + ("\r\n" if end else "")).encode("latin-1")


def read_until_closed(sock: socket.socket, *, deadline: float = DEADLINE) -> bytes:
    """Everything the server sends until it closes the connection; fails if it never does."""
    sock.settimeout(0.2)
    received = b""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open for {deadline} s; got {received[:200]!r}")


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


# 1. Compression ---------------------------------------------------------------------------------


def test_permessage_deflate_is_not_negotiated_by_default(edge: Edge, quiet: None) -> None:
    ticket = edge.mint()
    with connect(
        edge.service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], compression="deflate"
    ) as ws:
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


def test_permessage_deflate_is_negotiated_when_switched_on(tmp_path: Path) -> None:
    running, service = start_edge(tmp_path, env={"REALTIME_WS_COMPRESSION": "true"})
    with service:
        ticket = running.mint()
        with connect(
            service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], compression="deflate"
        ) as ws:
            assert ws.response is not None
            assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")


# 2. Slow, partial and oversize connections ------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        upgrade(end=False),
        b"POST /v3/realtime-sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        b"Content-Length: 100\r\n\r\n{",
    ],
    ids=["nothing", "partial-head", "partial-upgrade", "partial-body"],
)
def test_a_connection_without_a_complete_request_is_closed(edge: Edge, quiet: None, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", edge.port), timeout=DEADLINE) as sock:
        sock.sendall(sent.replace(b"{key}", edge.api_key.encode()))
        assert read_until_closed(sock) == b""


def test_a_partial_second_request_on_a_kept_alive_connection_is_closed(edge: Edge, quiet: None) -> None:
    with socket.create_connection(("127.0.0.1", edge.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while b'{"status":"ok"}' not in first:
            chunk = sock.recv(65536)
            assert chunk, "closed before answering"
            first += chunk
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert read_until_closed(sock) == b""


def test_a_client_trickling_its_headers_is_closed(edge: Edge, quiet: None) -> None:
    """A byte every 0.2 s keeps no connection open: the deadline is per request, not per byte."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        until = time.monotonic() + DEADLINE
        while time.monotonic() < until:
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                return
            sock.settimeout(0.2)
            try:
                if sock.recv(65536) == b"":
                    return
            except TimeoutError:
                continue
            except ConnectionResetError:
                return
        raise AssertionError("a trickling client kept its connection")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade("/v3/realtime?pad=" + "a" * 9216), 414),
        (upgrade(headers=("X-Pad: " + "a" * 9216,)), 431),
        (upgrade(headers=tuple(f"X-Pad-{n}: a" for n in range(200))), 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 900) for n in range(100)),
            431,
        ),
    ],
    ids=[
        "ws-request-line-9k",
        "ws-header-9k",
        "ws-200-headers",
        "http-header-100k",
        "http-head-unfinished-90k",
    ],
)
def test_an_oversize_request_head_gets_an_answer(
    edge: Edge, quiet: None, request_bytes: bytes, status: int
) -> None:
    answered_status, headers, body = parse(exchange(edge.port, request_bytes))
    assert answered_status == status
    assert headers["content-type"] == "application/json"
    assert error_code(body) == "request_too_large"


def test_connections_beyond_the_cap_get_503_before_any_work(tmp_path: Path) -> None:
    running, service = start_edge(
        tmp_path, env={"REALTIME_MAX_CONNECTIONS": "20", "REALTIME_HANDSHAKE_TIMEOUT_SECONDS": "60"}
    )
    with service, ExitStack() as held:
        ticket = running.mint()
        offset = len(service.log())
        originals = [
            held.enter_context(socket.create_connection(("127.0.0.1", running.port), timeout=DEADLINE))
            for _ in range(20)
        ]
        refused = httpx.post(
            service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {running.api_key}"},
            json={},
            timeout=DEADLINE,
        )
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_connections"
        with pytest.raises(InvalidStatus) as denied:
            connect(
                service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], open_timeout=DEADLINE
            )
        assert denied.value.response.status_code == 503
        assert error_code(bytes(denied.value.response.body or b"")) == "too_many_connections"
        # Idle connections past the cap are closed within a second (past the cap + 128, unread);
        # those within the cap keep their full handshake timeout.
        extra = [socket.create_connection(("127.0.0.1", running.port), timeout=DEADLINE) for _ in range(200)]
        for sock in extra:
            with sock:
                read_until_closed(sock)
        originals[0].settimeout(0.2)
        with pytest.raises(TimeoutError):
            originals[0].recv(1)  # still open: neither data nor end of stream
        held.close()  # the held connections go; the ticket was never looked at, so it still redeems
        until = time.monotonic() + DEADLINE
        while httpx.get(service.url + "/healthz", timeout=DEADLINE).status_code != 200:
            assert time.monotonic() < until, "the cap never let go"
            time.sleep(0.05)
        with connect(
            service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], open_timeout=DEADLINE
        ) as ws:
            ws.send(json.dumps({"type": "session.start", "config": {"model": MODEL}}))
            assert json.loads(ws.recv(timeout=DEADLINE))["type"] == "session.started"
        assert_quiet(service.settled_log()[offset:])


def test_handshakes_succeed_while_many_slow_connections_are_held(tmp_path: Path) -> None:
    """1,500 partial requests held open against a process whose descriptor limit starts at 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    running, service = start_edge(tmp_path, nofile=1024)
    try:
        with service, ExitStack() as held:
            offset = len(service.log())
            for number in range(1500):
                sock = held.enter_context(
                    socket.create_connection(("127.0.0.1", running.port), timeout=DEADLINE)
                )
                sock.sendall(upgrade(end=False) if number % 2 else b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            ticket = running.mint()
            with connect(
                service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], open_timeout=DEADLINE
            ) as ws:
                ws.send(json.dumps({"type": "session.start", "config": {"model": MODEL}}))
                assert json.loads(ws.recv(timeout=DEADLINE))["type"] == "session.started"
            assert_quiet(service.log()[offset:])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# 3. Refusals before the app, static paths, mint bodies ------------------------------------------


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ('Sec-WebSocket-Protocol: opper-ticket.{ticket}, "bad', 400),
        ("Sec-WebSocket-Protocol: opper-ticket.{ticket}, realtime;x", 400),
        ("Sec-WebSocket-Protocol: opper-ticket.{ticket}\x7f", 400),
        ("Sec-WebSocket-Protocol: opper-ticket.{ticket}\x00", 400),
    ],
    ids=["quote-in-protocols", "semicolon-in-protocols", "del-in-protocols", "nul-in-protocols"],
)
def test_a_malformed_handshake_header_gets_our_json_400_and_no_echo(
    edge: Edge, quiet: None, header: str, status: int
) -> None:
    ticket = edge.mint()
    raw = exchange(edge.port, upgrade(headers=(header.format(ticket=ticket),)))
    answered, headers, body = parse(raw)
    assert answered == status and headers["content-type"] == "application/json"
    assert error_code(body) == "invalid_request"
    assert ticket not in raw.decode("latin-1") and ticket[-20:] not in raw.decode("latin-1")
    # The app never saw the request: the ticket was not consumed.
    with connect(
        edge.service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{ticket}")], open_timeout=DEADLINE
    ):
        pass


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (upgrade().replace(WS_KEY.encode(), b"short"), 400, "invalid_request"),
        (upgrade().replace(b"Version: 13", b"Version: 12"), 400, "invalid_request"),
        (upgrade().replace(b"GET ", b"POST "), 405, "method_not_allowed"),
    ],
    ids=["bad-key", "old-version", "post"],
)
def test_a_handshake_websockets_refuses_gets_our_json_error(
    edge: Edge, quiet: None, request_bytes: bytes, status: int, code: str
) -> None:
    answered, headers, body = parse(exchange(edge.port, request_bytes))
    assert answered == status and headers["content-type"] == "application/json"
    assert error_code(body) == code


@pytest.mark.parametrize(
    "target",
    [
        "/static/x%00.js",
        "/static/demo.js%00",
        "/static/%00",
        "/static/..%2fconfig.py",
        "/static/%2e%2e%2fmain.py",
        "/static/%ff%fe.js",
        "/static/.js",
        "/static/index.html",
        "/static/" + "a" * 5000 + ".js",
        "/static/demo.js%0a%1b%5b31m",
    ],
    ids=[
        "nul-name",
        "nul-suffix",
        "nul-only",
        "dotdot",
        "dotdot-encoded",
        "not-utf8",
        "dot-js",
        "html",
        "long",
        "control-chars",
    ],
)
def test_a_static_path_that_names_no_file_is_404(edge: Edge, quiet: None, target: str) -> None:
    status, headers, body = parse(
        exchange(edge.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    )
    assert status == 404 and error_code(body) == "not_found"


def test_the_static_files_are_served(edge: Edge, quiet: None) -> None:
    for name, media in [
        ("demo.js", "text/javascript"),
        ("demo.css", "text/css"),
    ]:
        response = httpx.get(f"{edge.service.url}/static/{name}", timeout=DEADLINE)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media)


@pytest.mark.parametrize(
    ("body", "code", "details"),
    [
        (b'{"ttl_seconds":1,"ttl_seconds":300}', "invalid_json", {"member": "ttl_seconds"}),
        (b'{"config":{"voice":"alloy","voice":"ash"}}', "invalid_json", {"member": "voice"}),
        (b'{"ttl_seconds":1e400}', "invalid_json", None),
        (b'{"config":{"temperature":-1e400}}', "invalid_json", None),
        (b'{"ttl_seconds":' + b"9" * 5000 + b"}", "invalid_json", None),
        (b"[" * 60000, "invalid_json", None),
        (b'{"config":' * 5000 + b"{}" + b"}" * 5000, "invalid_json", None),
        (
            b'{"config":{"tools":[{"name":"f","parameters":' + b'{"a":' * 40 + b"1" + b"}" * 42 + b"]}}",
            "invalid_json",
            None,
        ),
        (b'{"ttl_seconds":NaN}', "invalid_json", None),
        (b'{"ttl_seconds":Infinity}', "invalid_json", None),
        (b'{"config":{"temperature":-Infinity}}', "invalid_json", None),
        (b'{"ttl_seconds":"60"}', "invalid_request", {"field": "ttl_seconds"}),
    ],
    ids=[
        "duplicate",
        "duplicate-nested",
        "overflow",
        "overflow-negative",
        "5000-digits",
        "deep-array",
        "deep-object",
        "deep-tool-schema",
        "nan",
        "infinity",
        "minus-infinity",
        "string-ttl",
    ],
)
def test_a_hostile_mint_body_gets_a_400(
    edge: Edge, quiet: None, body: bytes, code: str, details: dict[str, Any] | None
) -> None:
    response = httpx.post(
        edge.service.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {edge.api_key}", "Content-Type": "application/json"},
        content=body,
        timeout=DEADLINE,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    if details is not None:
        assert response.json()["error"]["details"] == details


# 5. The dev mint route ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("[::1]:{port}", 200),
        ("localhost.", 200),
        ("evil.example", 404),
        ("evil.example:{port}", 404),
        ("localhost.evil.example", 404),
        ("127.0.0.1.nip.io", 404),
        ("[::1].evil.example", 404),
        ("", 404),
    ],
    ids=[
        "ipv4",
        "localhost",
        "upper",
        "ipv6",
        "trailing-dot",
        "other",
        "other-port",
        "suffix",
        "rebind-name",
        "bracket-trick",
        "empty",
    ],
)
def test_the_dev_route_answers_only_loopback_host_names(
    edge: Edge, quiet: None, host: str, status: int
) -> None:
    raw = exchange(
        edge.port,
        (
            f"POST /dev/ticket HTTP/1.1\r\nHost: {host.format(port=edge.port)}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    answered, _, body = parse(raw)
    assert answered == status
    if status == 404:
        assert error_code(body) == "not_found"


@pytest.mark.parametrize(
    "forwarded_host",
    ["localhost", "127.0.0.1:8000", "evil.example"],
    ids=["loopback", "loopback-port", "other"],
)
def test_the_dev_route_refuses_a_forwarded_host(edge: Edge, quiet: None, forwarded_host: str) -> None:
    """A page can set `X-Forwarded-Host`, and the test client's 127.0.0.1 is a trusted proxy by
    default: the header must not turn a rebound name into a loopback one."""
    raw = exchange(
        edge.port,
        (
            "POST /dev/ticket HTTP/1.1\r\nHost: evil.example\r\n"
            f"X-Forwarded-Host: {forwarded_host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    answered, _, body = parse(raw)
    assert answered == 404 and error_code(body) == "not_found"


# 4. Logs ------------------------------------------------------------------------------------------


def test_the_log_holds_no_ticket_and_no_raw_control_character(tmp_path: Path) -> None:
    """At debug level websockets logs every handshake header too: still nothing secret or raw."""
    running, service = start_edge(
        tmp_path,
        env={"REALTIME_HANDSHAKE_TIMEOUT_SECONDS": "1", "REALTIME_START_TIMEOUT_SECONDS": "1"},
        args=("--log-level", "debug"),
    )
    with service:
        tickets = [running.mint() for _ in range(4)]
        httpx.get(f"{service.url}/healthz?%74icket={tickets[0]}&TICKET={tickets[1]}", timeout=DEADLINE)
        exchange(running.port, upgrade(f"/v3/realtime?tick%65t={tickets[2]}"))
        with connect(service.ws_url, subprotocols=[Subprotocol(f"opper-ticket.{tickets[3]}")]):
            pass
        exchange(running.port, upgrade(headers=("X-Evil: one\x85two\x9b31mthree",)))
        until = time.monotonic() + DEADLINE
        while "x-evil" not in service.log():
            assert time.monotonic() < until, "the debug lines never arrived"
            time.sleep(0.05)
    log = service.log()
    for ticket in tickets:
        assert ticket not in log and ticket[-24:] not in log
    assert "%74icket=[redacted]" in log and "tick%65t=[redacted]" in log
    assert not any(char in log for char in "\x85\x9b\x1b\x00")
    assert "one\\x85two\\x9b31mthree" in log
    assert_quiet(log)


@pytest.mark.parametrize(
    ("limits", "raised_to", "cap"),
    [
        ((1024, 1_048_576), 10_256, 10_000),
        ((1024, 2000), 2000, 1744),
        ((65_536, 65_536), None, 10_000),
    ],
    ids=["raised-to-fit", "hard-limit-lowers-the-cap", "already-enough"],
)
def test_the_descriptor_limit_is_raised_or_the_cap_lowered(
    monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], raised_to: int | None, cap: int
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: calls.append(value))
    result = server.connection_limits(Settings(max_connections=10_000, handshake_timeout_seconds=3))
    assert result.max_connections == cap and result.handshake_timeout == 3
    assert calls == ([] if raised_to is None else [(raised_to, limits[1])])
