"""`python -m app.serve` for real: trusted proxies, the admin listener, and several worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from app.edge.proxies import ForwardedHeaders, TrustedProxies
from app.ops.processes import alive, free_port
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.polling import poll
from tests.redis_server import RedisServer, redis_server
from tests.servers import ROOT, ServiceProcess

__all__ = ["redis_server"]  # the fixture, imported so pytest finds it

MODEL = "openai/gpt-realtime-2"


def prepared(tmp_path: Path) -> tuple[Path, str]:
    keys = tmp_path / "keys"
    ensure_keys(keys, now=int(time.time()))
    plain, _ = create_key(keys / "api_keys.json", project="acme", kind="runtime", now=int(time.time()))
    return keys, plain


def mint_from(url: str, key: str, *, source: str, headers: dict[str, str]) -> dict[str, Any]:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.post(
            url + "/v3/realtime-sessions", headers={"Authorization": f"Bearer {key}", **headers}, json={}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# Trusted proxies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "source", "headers", "expected"),
    [
        (None, "127.0.0.2", {"X-Forwarded-Proto": "https"}, "ws://127.0.0.1:{port}/"),
        ("127.0.0.2", "127.0.0.2", {"X-Forwarded-Proto": "https"}, "wss://127.0.0.1:{port}/"),
        ("127.0.0.0/8", "127.0.0.2", {"X-Forwarded-Proto": "https"}, "wss://127.0.0.1:{port}/"),
        (None, "127.0.0.1", {"X-Forwarded-Proto": "https"}, "wss://127.0.0.1:{port}/"),
        (
            "127.0.0.2",
            "127.0.0.2",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "rt.example.com"},
            "wss://rt.example.com/",
        ),
        (None, "127.0.0.2", {"X-Forwarded-Host": "evil.example.com"}, "ws://127.0.0.1:{port}/"),
        ("127.0.0.3", "127.0.0.2", {"X-Forwarded-Proto": "https"}, "ws://127.0.0.1:{port}/"),
    ],
    ids=[
        "untrusted-peer-default",
        "trusted-address",
        "trusted-cidr",
        "loopback-trusted-by-default",
        "trusted-forwarded-host",
        "untrusted-forwarded-host",
        "other-address-trusted",
    ],
)
def test_ws_url_believes_forwarded_headers_from_trusted_proxies_only(
    tmp_path: Path, trusted: str | None, source: str, headers: dict[str, str], expected: str
) -> None:
    keys, key = prepared(tmp_path)
    env = {"REALTIME_KEYS_DIR": str(keys)}
    if trusted is not None:
        env["REALTIME_TRUSTED_PROXIES"] = trusted
    with ServiceProcess(env=env, log_path=tmp_path / "service.log") as service:
        body = mint_from(service.url, key, source=source, headers=headers)
        assert body["ws_url"].startswith(expected.format(port=service.port) + "v3/realtime?ticket=")


# (source address, headers) -> the ws_url's host; `{port}` is the service's port.
HOST_CASES: dict[str, tuple[str, dict[str, str], str]] = {
    "untrusted-host-evil": ("127.0.0.2", {"Host": "evil.example"}, "127.0.0.1:{port}"),
    "untrusted-host-evil-with-port": ("127.0.0.2", {"Host": "evil.example:8000"}, "127.0.0.1:{port}"),
    "untrusted-forwarded-host-evil": ("127.0.0.2", {"X-Forwarded-Host": "evil.example"}, "127.0.0.1:{port}"),
    "untrusted-both-evil": (
        "127.0.0.2",
        {"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        "127.0.0.1:{port}",
    ),
    "untrusted-localhost": ("127.0.0.2", {"Host": "localhost:{port}"}, "localhost:{port}"),
    "untrusted-localhost-upper-case": ("127.0.0.2", {"Host": "LOCALHOST:{port}"}, "LOCALHOST:{port}"),
    "untrusted-listen-address": ("127.0.0.2", {"Host": "127.0.0.1:{port}"}, "127.0.0.1:{port}"),
    "untrusted-other-loopback-name": ("127.0.0.2", {"Host": "127.0.0.2:{port}"}, "127.0.0.1:{port}"),
    "trusted-proxy-host": ("127.0.0.1", {"Host": "rt.example.com"}, "rt.example.com"),
    "trusted-proxy-forwarded-host": ("127.0.0.1", {"X-Forwarded-Host": "rt.example.com"}, "rt.example.com"),
}


def test_ws_url_host_comes_from_the_request_only_when_trusted_or_allowed(tmp_path: Path) -> None:
    """Without REALTIME_PUBLIC_WS_URL, a client that is not a trusted proxy cannot make the mint hand
    out a ws_url on another host (`Host: evil.example`): it gets the listen address instead."""
    keys, key = prepared(tmp_path)
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys)}, log_path=tmp_path / "service.log") as service:
        found = {}
        for case, (source, headers, _) in HOST_CASES.items():
            sent = {name: value.format(port=service.port) for name, value in headers.items()}
            ws_url = mint_from(service.url, key, source=source, headers=sent)["ws_url"]
            found[case] = ws_url.split("://", 1)[1].split("/v3/realtime?ticket=", 1)[0]
    expected = {case: host.format(port=service.port) for case, (_, _, host) in HOST_CASES.items()}
    assert found == expected
    assert not any("evil" in host for host in found.values())


def test_allowed_hosts_name_the_hosts_a_ws_url_may_use(tmp_path: Path) -> None:
    keys, key = prepared(tmp_path)
    env = {"REALTIME_KEYS_DIR": str(keys), "REALTIME_ALLOWED_HOSTS": "rt.example.com, [::1]"}
    with ServiceProcess(env=env, log_path=tmp_path / "service.log") as service:

        def host_for(host: str) -> str:
            ws_url: str = mint_from(service.url, key, source="127.0.0.2", headers={"Host": host})["ws_url"]
            return ws_url.split("://", 1)[1].split("/v3/realtime?ticket=", 1)[0]

        assert host_for("rt.example.com") == "rt.example.com"
        assert host_for("RT.example.com:8443") == "RT.example.com:8443"
        assert host_for("[::1]:9") == "[::1]:9"
        assert host_for("evil.example") == f"127.0.0.1:{service.port}"
        assert host_for("rt.example.com.evil.example") == f"127.0.0.1:{service.port}"
        assert host_for(f"localhost:{service.port}") == f"127.0.0.1:{service.port}"  # not in the list


def scope(client: str, headers: list[tuple[bytes, bytes]], kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "scheme": "http", "client": (client, 5000), "headers": headers, "path": "/"}


def seen(trusted: list[str], request: dict[str, Any]) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        captured.update(scope)

    asyncio.run(ForwardedHeaders(app, trusted=trusted)(request, None, None))  # type: ignore[arg-type]
    return captured


@pytest.mark.parametrize(
    ("trusted", "request_scope", "scheme", "client", "host"),
    [
        (["10.0.0.0/8"], scope("10.1.2.3", [(b"x-forwarded-proto", b"https")]), "https", "10.1.2.3", None),
        (
            ["10.0.0.0/8"],
            scope("10.1.2.3", [(b"x-forwarded-proto", b"https")], kind="websocket"),
            "wss",
            "10.1.2.3",
            None,
        ),
        (
            ["10.0.0.0/8"],
            scope("10.1.2.3", [(b"x-forwarded-for", b"1.1.1.1, 203.0.113.9, 10.0.0.5")]),
            "http",
            "203.0.113.9",
            None,
        ),
        (
            ["10.0.0.0/8"],
            scope("10.1.2.3", [(b"x-forwarded-host", b"bad host/evil"), (b"host", b"a:1")]),
            "http",
            "10.1.2.3",
            "a:1",
        ),
        (
            ["10.0.0.0/8"],
            scope("10.1.2.3", [(b"x-forwarded-host", b"[2001:db8::1]:8443"), (b"host", b"a:1")]),
            "http",
            "10.1.2.3",
            "[2001:db8::1]:8443",
        ),
        (["10.0.0.0/8"], scope("192.0.2.1", [(b"x-forwarded-proto", b"https")]), "http", "192.0.2.1", None),
        (["*"], scope("192.0.2.1", [(b"x-forwarded-proto", b"https")]), "https", "192.0.2.1", None),
        (["::1"], scope("::1", [(b"x-forwarded-proto", b"https")]), "https", "::1", None),
        (["10.0.0.0/8"], scope("10.1.2.3", [(b"x-forwarded-proto", b"gopher")]), "http", "10.1.2.3", None),
    ],
    ids=[
        "proto-https",
        "proto-websocket",
        "for-chain-last-untrusted",
        "bad-forwarded-host-ignored",
        "ipv6-forwarded-host",
        "untrusted-peer",
        "star-trusts-all",
        "ipv6-peer",
        "unknown-proto-ignored",
    ],
)
def test_forwarded_headers(
    trusted: list[str], request_scope: dict[str, Any], scheme: str, client: str, host: str | None
) -> None:
    result = seen(trusted, request_scope)
    assert result["scheme"] == scheme and result["client"][0] == client
    assert dict(result["headers"]).get(b"host", b"").decode() == (
        host or dict(request_scope["headers"]).get(b"host", b"").decode()
    )


def test_trusted_proxies_take_addresses_and_networks() -> None:
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    assert "127.0.0.1" in proxies and "10.200.0.1" in proxies and "2001:db8::5" in proxies
    assert "127.0.0.2" not in proxies and "not-an-ip" not in proxies and None not in proxies


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REALTIME_TRUSTED_PROXIES", "10.0.0.0/40"),
        ("REALTIME_TRUSTED_PROXIES", "proxy.example.com"),
        ("REALTIME_ADMIN_PORT", "0"),
        ("REALTIME_ADMIN_PORT", "70000"),
        ("REALTIME_ADMIN_PORT", "metrics"),
    ],
    ids=["bad-cidr", "hostname", "admin-port-zero", "admin-port-too-big", "admin-port-word"],
)
def test_bad_proxy_and_admin_settings_stop_start_up(tmp_path: Path, variable: str, value: str) -> None:
    keys, _ = prepared(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "app.serve", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "REALTIME_KEYS_DIR": str(keys), variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert variable in result.stderr and "Traceback" not in result.stderr


# The admin listener ---------------------------------------------------------------------------


def test_admin_port_takes_metrics_and_readiness_off_the_public_port(tmp_path: Path) -> None:
    keys, key = prepared(tmp_path)
    admin = free_port()
    env = {"REALTIME_KEYS_DIR": str(keys), "REALTIME_ADMIN_PORT": str(admin)}
    with ServiceProcess(env=env, log_path=tmp_path / "service.log") as service:
        admin_url = f"http://127.0.0.1:{admin}"
        poll(lambda: b"Admin listener" in service.log().encode(), "the admin listener line")
        for path in ("/metrics", "/readyz"):
            public = httpx.get(service.url + path, timeout=10)
            assert public.status_code == 404 and public.json()["error"]["code"] == "not_found"
        assert httpx.get(admin_url + "/readyz", timeout=10).json() == {"status": "ok"}
        minted = httpx.post(
            service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {key}"},
            json={},
            timeout=10,
        )
        assert minted.status_code == 200
        metrics = httpx.get(admin_url + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "realtime_tickets_minted_total 1.0" in metrics.text
        # The admin listener serves nothing else, and the public port still serves health.
        assert httpx.get(admin_url + "/v3/models", timeout=10).status_code == 404
        with pytest.raises(InvalidStatus) as caught:
            connect(f"ws://127.0.0.1:{admin}/v3/realtime", open_timeout=10)
        assert caught.value.response.status_code == 404
        assert httpx.get(service.url + "/healthz", timeout=10).status_code == 200
        assert httpx.get(admin_url + "/healthz", timeout=10).status_code == 200
    log = service.log()
    assert f"Admin listener (/metrics, /readyz) on http://127.0.0.1:{admin}" in log
    assert "ERROR" not in log and "Traceback" not in log


ADMIN_SPELLINGS = [
    "/metrics%0A",
    "/readyz%0A",
    "/metrics%0a",
    "/metrics%0D%0A",
    "/metrics%00",
    "/metrics%20",
    "/metrics/",
    "/readyz/",
    "/metrics%2F",
    "/METRICS",
    "/Readyz",
    "//metrics",
    "//readyz",
    "///metrics/",
    "/./metrics",
    "/metrics/.",
    "/x/../metrics",
    "/%6Detrics",
]


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET with `path` sent byte for byte (no client library normalises it); status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_no_spelling_of_an_admin_path_answers_on_the_public_port(tmp_path: Path) -> None:
    """`/metrics%0A` once reached the metrics route on the public port (the route's pattern accepts a
    trailing newline); every spelling is refused there, and the admin port answers only exact paths."""
    keys, _ = prepared(tmp_path)
    admin = free_port()
    env = {"REALTIME_KEYS_DIR": str(keys), "REALTIME_ADMIN_PORT": str(admin)}
    with ServiceProcess(env=env, log_path=tmp_path / "service.log") as service:
        poll(lambda: b"Admin listener" in service.log().encode(), "the admin listener line")
        public = int(service.url.rsplit(":", 1)[1])
        answers = {path: raw_get(public, path) for path in ADMIN_SPELLINGS}
        assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(ADMIN_SPELLINGS, 404)
        for path, (_, body) in answers.items():
            assert json.loads(body)["error"]["code"] == "not_found", path
            assert b"realtime_" not in body and b'"status"' not in body, path
        assert raw_get(admin, "/metrics")[0] == 200 and raw_get(admin, "/readyz")[0] == 200
        assert raw_get(admin, "/metrics%0A")[0] == 404
    assert "Traceback" not in service.log()


# Several worker processes ---------------------------------------------------------------------


def test_workers_refuse_the_memory_store(tmp_path: Path) -> None:
    keys, _ = prepared(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "app.serve", "--port", "0", "--workers", "2"],
        env={"PATH": "/usr/bin:/bin", "REALTIME_KEYS_DIR": str(keys)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "memory://" in result.stderr and "REALTIME_REPLAY_URL=redis://" in result.stderr
    assert "Traceback" not in result.stderr


def workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if alive(int(child), "--worker-fds")]


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def mint(service: ServiceProcess, key: str) -> str:
    response = httpx.post(
        service.url + "/v3/realtime-sessions", headers={"Authorization": f"Bearer {key}"}, json={}, timeout=10
    )
    assert response.status_code == 200, response.text
    ticket: str = response.json()["client_secret"]
    return ticket


def start_session(ws: Any) -> None:
    ws.send(json.dumps({"type": "session.start", "config": {"model": MODEL}}))
    while json.loads(ws.recv(timeout=10))["type"] != "session.started":
        pass


def test_workers_share_the_port_and_the_replay_store_and_drain(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keys, key = prepared(tmp_path)
    env = {"REALTIME_KEYS_DIR": str(keys), "REALTIME_REPLAY_URL": redis_server.url}
    service = ServiceProcess(env=env, log_path=tmp_path / "service.log", args=("--workers", "2"))
    with service:
        assert service.process is not None
        supervisor = service.process.pid
        poll(lambda: len(workers_of(supervisor)) == 2, "two workers")
        workers = workers_of(supervisor)
        poll(lambda: service.log().count("Application startup complete") == 2, "both workers to start")
        # Each ticket works once, whichever worker answers.
        for _ in range(6):
            ticket = mint(service, key)
            with connect(service.ws_url, subprotocols=[f"opper-ticket.{ticket}"], open_timeout=10) as ws:  # type: ignore[list-item]
                start_session(ws)
            with pytest.raises(InvalidStatus) as caught:
                connect(service.ws_url, subprotocols=[f"opper-ticket.{ticket}"], open_timeout=10)  # type: ignore[list-item]
            assert json.loads(caught.value.response.body or b"{}")["error"]["code"] == "ticket_replayed"
        # A worker that dies is replaced; SIGTERM to the supervisor drains every worker.
        os.kill(workers[0], signal.SIGKILL)
        poll(
            lambda: len(workers_of(supervisor)) == 2 and workers[0] not in workers_of(supervisor),
            "a replacement worker",
        )
        poll(lambda: service.log().count("Application startup complete") == 3, "the replacement to start")
        ticket = mint(service, key)
        with connect(service.ws_url, subprotocols=[f"opper-ticket.{ticket}"], open_timeout=10) as ws:  # type: ignore[list-item]
            start_session(ws)
            remaining = workers_of(supervisor)
            service.signal(signal.SIGTERM)
            event = json.loads(ws.recv(timeout=20))
            assert (event["type"], event["error"]["code"]) == ("session.terminating", "server_shutdown")
            # Draining: nobody listens any more, so a load balancer moves new handshakes elsewhere.
            poll(lambda: refuses(service.port), "the port to refuse new connections")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=20)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert service.wait(timeout=40) == 0
        assert not any(alive(pid, "--worker-fds") for pid in remaining)
    log = service.log()
    assert "exited with -9; starting another" in log and "Traceback" not in log
