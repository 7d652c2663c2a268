"""A `GET /v3/realtime` handshake's own checks: its one credential, the ticket verified, the Origin."""

from __future__ import annotations

import time
from typing import NamedTuple

from starlette.websockets import WebSocket

from app.edge.services import Services
from app.exceptions import (
    AmbiguousTicketError,
    MissingCredentialsError,
    OriginNotAllowedError,
    UnknownKeyError,
)
from app.tickets.bearer import bearer_token
from app.tickets.ticket import Ticket, verify

TICKET_PROTOCOL = "opper-ticket."
SESSION_PROTOCOL = "realtime"


class Credentials(NamedTuple):
    """What the client presented: a ticket (and how), or a bearer key."""

    ticket: str | None
    in_subprotocol: bool
    api_key: str | None
    offered: tuple[str, ...]

    def subprotocol(self) -> str | None:
        """The answer: `realtime` when offered, else the offered ticket protocol, else none."""
        if SESSION_PROTOCOL in self.offered:
            return SESSION_PROTOCOL
        if self.in_subprotocol and self.ticket is not None:
            return TICKET_PROTOCOL + self.ticket
        return None


def read_credentials(websocket: WebSocket, headers: dict[bytes, bytes]) -> Credentials:
    """Step 1: exactly one credential (`headers` as `first_headers` gives them).

    Raises:
        AmbiguousTicketError: two different tickets (subprotocols, query values, or both).
        MissingCredentialsError: neither a ticket nor an `Authorization` header.
    """
    # The server has already split `Sec-WebSocket-Protocol` into the ASGI scope's list.
    offered = tuple(websocket.scope.get("subprotocols") or ())
    # The prefix is matched case-sensitively and the ticket is never lower-cased (docs/security.md).
    from_protocol = {item[len(TICKET_PROTOCOL) :] for item in offered if item.startswith(TICKET_PROTOCOL)}
    tickets = set(from_protocol)
    # The key counts however it is spelled on the wire (`?%74icket=` is `ticket` too); a query with
    # neither the word nor an escape cannot name it, and is not parsed.
    query = websocket.scope.get("query_string", b"")
    if b"ticket" in query or b"%" in query:
        tickets = from_protocol | set(websocket.query_params.getlist("ticket"))
    if len(tickets) > 1:
        raise AmbiguousTicketError("the request carries more than one ticket: send exactly one")
    authorization = headers.get(b"authorization")
    if tickets:
        return Credentials(tickets.pop(), bool(from_protocol), None, offered)
    if authorization is None:
        raise MissingCredentialsError(
            "present a ticket as the `opper-ticket.<ticket>` subprotocol or `?ticket=`, "
            "or send `Authorization: Bearer <runtime API key>`"
        )
    return Credentials(None, False, bearer_token(authorization.decode("latin-1")), offered)


async def verify_ticket(services: Services, token: str) -> Ticket:
    """Step 2 for a ticket: verify, reloading a key set once on an unknown kid.

    A sealed ticket names two keys (seal and signing); after a rotation both may be new to this
    edge, so each key set is reloaded at most once, when its own kid is unknown.
    """
    settings = services.settings
    started = time.perf_counter()

    def attempt() -> Ticket:
        return verify(
            token,
            services.keys.current(),
            seal_keys=services.seal_keys.current(),
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway_seconds,
            max_bytes=settings.ticket_max_bytes,
            now=services.clock.now(),
        )

    try:
        reloaded: set[bool] = set()
        while True:
            try:
                ticket = attempt()
                break
            except UnknownKeyError as exc:
                if exc.sealed in reloaded:
                    raise
                reloaded.add(exc.sealed)
                await (services.seal_keys.refresh() if exc.sealed else services.keys.refresh())
    finally:
        services.metrics.verify_seconds.observe(time.perf_counter() - started)
    return ticket


def check_origin(services: Services, headers: dict[bytes, bytes]) -> None:
    """Step 3: a browser's `Origin` must be allowed, when an allow-list is set."""
    allowed = services.settings.allowed_origins
    if not allowed:
        return
    raw = headers.get(b"origin")
    origin = None if raw is None else raw.decode("latin-1")
    if origin is not None and origin.rstrip("/") not in allowed:
        raise OriginNotAllowedError(f"origin {origin!r} is not allowed to open sessions")
