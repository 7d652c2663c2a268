"""What the service believes about a request's origin, and which listener answers what.

`ForwardedHeaders` applies `X-Forwarded-Proto`, `-For` and `-Host` only when the connection comes from
a trusted proxy (`REALTIME_TRUSTED_PROXIES`), so a mint behind a TLS proxy on another host answers a
`wss://` `ws_url`, and nobody else can make it point elsewhere. `AdminListener` keeps `/metrics` and
`/readyz` on the admin port (`REALTIME_ADMIN_PORT`) only. Plain ASGI, no framework.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from app import logs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_PATHS = frozenset({"/metrics", "/readyz", "/v3/admin/sessions", "/v3/admin/revocations"})
#: Scope key `ForwardedHeaders` sets to True when the peer is a trusted proxy.
PROXIED = "realtime.proxied"
# Underscores pass: container and service names often have them, and they change no URL.
_HOST = re.compile(r"^[A-Za-z0-9_.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


KNOWN_PEERS = 4096  # peer addresses whose answer is remembered


class TrustedProxies:
    """A set of addresses and networks; `*` trusts every peer."""

    def __init__(self, items: Iterable[str]) -> None:
        items = list(items)
        self.everyone = "*" in items
        self.networks: list[Network] = [
            ipaddress.ip_network(item, strict=False) for item in items if item != "*"
        ]
        self._known: dict[str, bool] = {}

    def __contains__(self, host: object) -> bool:
        if self.everyone:
            return True
        if not isinstance(host, str):
            return False
        # Every request asks about its peer, and parsing an address costs microseconds: answers are
        # remembered, up to a bound (the set never changes, so an answer never goes stale).
        known = self._known.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        found = any(address in network for network in self.networks)
        if len(self._known) < KNOWN_PEERS:
            self._known[host] = found
        return found

    def client(self, forwarded_for: str) -> str | None:
        """The client in an `X-Forwarded-For` chain: the last hop that is not a trusted proxy."""
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0] if hops else None


def first_headers(scope: Scope) -> dict[bytes, bytes]:
    """A request's headers by their (lower-case) names, the first value of each, as Starlette's
    `headers.get` reads them: one pass over the list, where each `headers.get` walks it again."""
    return dict(reversed(scope["headers"]))


def valid_host(host: str) -> bool:
    """`host` is a host name or an IP literal, with an optional port: fit to put in a URL."""
    return len(host) <= 255 and _HOST.match(host) is not None


def host_name(host: str) -> str:
    """The name part of `host[:port]`, lower-cased: `rt.example.com`, `127.0.0.1`, `[::1]`."""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rpartition(":")[0].lower() if ":" in host else host.lower()


def host_allowed(scope: Scope, host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a URL handed back to the client may name `host` (a valid `host[:port]`): the request
    came through a trusted proxy, or the host is in `allowed` (REALTIME_ALLOWED_HOSTS; empty: the
    address the connection reached and `localhost`)."""
    if scope.get(PROXIED):
        return True
    name = host_name(host)
    if allowed:
        return name in allowed
    server = scope.get("server")
    listen = (f"[{server[0]}]" if ":" in server[0] else server[0]).lower() if server else None
    return name in ("localhost", listen)


def _first(value: bytes) -> str:
    return value.decode("latin-1").split(",")[0].strip()


def forwarded(scope: Scope, trusted: TrustedProxies) -> Scope:
    """`scope` as the trusted proxy saw the request: scheme, client address and `Host`."""
    proto = forwarded_for = host = None
    headers = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-proto":
            proto = _first(value).lower()
        elif name == b"x-forwarded-for":
            forwarded_for = (
                value.decode("latin-1")
                if forwarded_for is None
                else f"{forwarded_for},{value.decode('latin-1')}"
            )
        elif name == b"x-forwarded-host":
            host = _first(value)
        headers.append((name, value))
    if proto is None and forwarded_for is None and host is None:
        # Nothing forwarded (a trusted peer's direct request): the scope as it is. A copy would live
        # as long as the connection, a WebSocket session's hours included.
        return scope
    scope = dict(scope)
    if proto in {"http", "https", "ws", "wss"}:
        secure = proto in {"https", "wss"}
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
    if forwarded_for is not None:
        client = trusted.client(forwarded_for)
        if client:
            scope["client"] = (client, 0)
    if host is not None and valid_host(host):
        scope["headers"] = [(n, v) for n, v in headers if n != b"host"] + [(b"host", host.encode("latin-1"))]
    return scope


class ForwardedHeaders:
    """ASGI middleware: believe forwarded headers from trusted proxies only."""

    def __init__(self, app: ASGIApp, *, trusted: Iterable[str]) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if peer is not None and peer[0] in self.trusted:
                scope = forwarded(scope, self.trusted)
                scope[PROXIED] = True
        await self.app(scope, receive, send)


def admin_route(path: str) -> bool:
    """Whether `path` (decoded) names an admin route however it is spelt: case, repeated or trailing
    slashes, dot segments, or control characters and spaces around it (Starlette's route pattern ends in
    `$`, which also matches before a trailing newline: `/metrics%0A` reaches the metrics route)."""
    bare = re.sub(r"[\x00-\x20\x7f]+", "", path).lower()
    return posixpath.normpath("/" + bare.lstrip("/")) in ADMIN_PATHS


class AdminListener:
    """ASGI middleware: `/metrics` and `/readyz` only on the admin port, nothing else there but `/healthz`.

    The admin port answers exact paths only; the public port refuses every spelling of an admin path
    (`admin_route`).
    """

    def __init__(self, app: ASGIApp, *, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            server = scope.get("server")
            on_admin = server is not None and server[1] == self.port
            path = scope["path"]
            admin_path = path in ADMIN_PATHS if on_admin else admin_route(path)
            if on_admin != admin_path and not (on_admin and path == "/healthz"):
                await _not_found(scope, send, on_admin=on_admin)
                return
        await self.app(scope, receive, send)


async def _not_found(scope: Scope, send: Send, *, on_admin: bool) -> None:
    if not on_admin:
        message = "/metrics and /readyz are served on the admin port only (REALTIME_ADMIN_PORT)"
    else:
        message = "the admin port serves only /metrics, /readyz, /healthz and /v3/admin/"
    body = json.dumps({"error": {"code": "not_found", "message": message}}).encode()
    if scope["type"] == "websocket":
        logs.DENIED.set(True)  # an ordinary answer, not the ERROR uvicorn logs for an unfinished handshake
    prefix = "websocket.http" if scope["type"] == "websocket" else "http"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": f"{prefix}.response.start", "status": 404, "headers": headers})
    await send({"type": f"{prefix}.response.body", "body": body})
