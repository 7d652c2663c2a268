"""`POST /v3/realtime-sessions`: a backend trades its runtime API key for a single-use ticket."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from starlette.requests import Request

from app import strictjson
from app.edge.proxies import first_headers, host_allowed, valid_host
from app.edge.responses import NO_STORE, JSONResponse
from app.edge.services import Services
from app.exceptions import (
    InvalidCredentialsError,
    InvalidJSONError,
    InvalidRequestError,
    RequestTooLargeError,
    TicketsDisabledError,
)
from app.logs import fields
from app.session.binding import MAX_NESTING, Binding, nesting_exceeds, prepare_binding, shortened
from app.session.models import ModelRegistry
from app.tickets.bearer import bearer_token
from app.tickets.claims import tid
from app.tickets.keys import MAX_TICKET_SECONDS, SigningKey
from app.tickets.ticket import IssuedTicket, issue, rfc3339

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
FIELDS = ("config", "locked_fields", "ttl_seconds")
DEFAULT_TTL, MIN_TTL = 60, 1


async def read_body(request: Request, *, limit: int, declared_length: bytes | None) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over `limit` bytes.

    `declared_length` is the `Content-Length` header, when there is one.
    """
    declared = (declared_length or b"").decode("latin-1").lstrip("0")
    # ASCII digits only (`"²".isdigit()` is true), and no int() of thousands of digits.
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise RequestTooLargeError(f"the request body is over {limit} bytes")
    # The ASGI messages directly: Starlette's `request.stream()` is an async generator, which cost
    # more than the rest of this function for the usual one-message body.
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            # Gone mid-body (it closed, or sent too slowly and was closed): an answer nobody reads.
            raise InvalidRequestError("the connection closed before the whole request body arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"the request body is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a mint request; empty means `{}`, `null` values mean absent.

    Raises:
        InvalidJSONError: not UTF-8/16/32 JSON; `NaN`, `Infinity` or a number beyond a double;
            nesting deeper than `MAX_NESTING`; a member name twice in one object
            (`details.member` names it); not an object.
        InvalidRequestError: a top-level member other than `config`, `locked_fields`, `ttl_seconds`.
    """
    if not raw.strip():
        return {}
    try:
        body = strictjson.loads(raw.decode(json.detect_encoding(raw)))
    except strictjson.DuplicateMemberError as exc:
        member = shortened(exc.member)
        raise InvalidJSONError(
            f"the request body has the member {member!r} twice in one object", details={"member": member}
        ) from None
    except strictjson.NotANumberError as exc:
        raise InvalidJSONError(
            f"the request body has {exc}: JSON numbers must be finite and fit a double"
        ) from None
    except RecursionError:
        raise InvalidJSONError(f"the request body is nested deeper than {MAX_NESTING} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidJSONError("the request body is not valid JSON") from None
    if nesting_exceeds(body, MAX_NESTING):
        raise InvalidJSONError(f"the request body is nested deeper than {MAX_NESTING} levels")
    if not isinstance(body, dict):
        raise InvalidJSONError("the request body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        field = shortened(unknown[0])
        raise InvalidRequestError(
            f"unknown request field: {field!r} (allowed: {', '.join(FIELDS)})", details={"field": field}
        )
    return {name: value for name, value in body.items() if value is not None}


def ttl_seconds(body: dict[str, Any]) -> int:
    """`ttl_seconds`: a JSON integer, clamped into [1, 300]; never rejected for its range."""
    value = body.get("ttl_seconds", DEFAULT_TTL)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            "ttl_seconds must be a JSON integer (seconds)", details={"field": "ttl_seconds"}
        )
    return max(MIN_TTL, min(MAX_TICKET_SECONDS, value))


#: Mint bodies up to this size are remembered with what they ask for (most backends send the same
#: few bodies over and over): a repeated body skips the JSON parse, the duplicate-member and nesting
#: checks, the schema and the capability check. Only bodies that passed are remembered.
REMEMBERED_BODY_BYTES = 4096
REMEMBERED_BODIES = 256


def read_request(raw: bytes, registry: ModelRegistry) -> tuple[int, Binding]:
    """The TTL and the binding a mint body asks for: `parse_body`, `ttl_seconds`, `prepare_binding`.

    The binding of a remembered body is shared by every mint of that body: nothing changes it.

    Raises:
        InvalidJSONError, InvalidRequestError, ConfigError: as those three.
    """
    if len(raw) <= REMEMBERED_BODY_BYTES:
        return _remembered(raw, registry)
    return _request(raw, registry)


def _request(raw: bytes, registry: ModelRegistry) -> tuple[int, Binding]:
    body = parse_body(raw)
    ttl = ttl_seconds(body)
    return ttl, prepare_binding(body.get("config"), body.get("locked_fields"), registry)


# An exception is never remembered (lru_cache keeps returned values only).
_remembered = functools.lru_cache(maxsize=REMEMBERED_BODIES)(_request)


def check_host(services: Services, host: str | None) -> None:
    """The `Host` a `ws_url` is built from must be a host name (as `X-Forwarded-Host` must be).

    Raises:
        InvalidRequestError: `ws_url` is built from `Host` (no `REALTIME_PUBLIC_WS_URL`) and `Host`
            is not a host name or IP literal with an optional port.
    """
    settings = services.settings
    if not settings.ws_url_enabled or settings.public_ws_url is not None:
        return
    if host is not None and not valid_host(host):
        raise InvalidRequestError(
            "the Host header is not a host name: the ws_url is built from it", details={"field": "host"}
        )


def ws_url(services: Services, request: Request, host: str | None, ticket: str) -> str:
    """The URL to redeem `ticket` at: `REALTIME_PUBLIC_WS_URL`, else this request's scheme and `host`
    when `host` may be believed (`app.edge.proxies.host_allowed`), else the address the request reached."""
    settings = services.settings
    if not settings.ws_url_enabled:
        return ""
    base = settings.public_ws_url
    if base is None:
        # From the scope and the Host header directly: building `request.url` costs more than the rest.
        scheme = "wss" if request.scope.get("scheme") == "https" else "ws"
        if host is None or not host_allowed(request.scope, host, settings.allowed_hosts):
            server_host, server_port = request.scope.get("server") or ("localhost", 80)
            host = f"[{server_host}]:{server_port}" if ":" in server_host else f"{server_host}:{server_port}"
        base = f"{scheme}://{host}/v3/realtime"
    return f"{base}{'&' if '?' in base else '?'}ticket={ticket}"


def require_signer(services: Services) -> SigningKey:
    """The key this node signs with; `503 tickets_disabled` when tickets are off or it has none.

    With sealed tickets on, a node without an active seal key cannot mint either: it never falls
    back to a plain ticket, whose bound config the browser could read.
    """
    if not services.settings.tickets_enabled:
        raise TicketsDisabledError("realtime tickets are switched off on this deployment")
    signer = services.keys.current().signer
    if signer is None:
        raise TicketsDisabledError("this node has no signing key (a verify-only edge)")
    if services.settings.sealed_tickets and services.seal_keys.current().sealer is None:
        raise TicketsDisabledError("this node has no active seal key: run `make keys`")
    return signer


def issue_ticket(
    services: Services,
    signer: SigningKey,
    *,
    project: str,
    binding: Binding,
    ttl: int,
    api_key_id: str | None = None,
) -> IssuedTicket:
    """Sign a ticket with this deployment's issuer, audience and size budget, and count it."""
    settings = services.settings
    seal = services.seal_keys.current().sealer if settings.sealed_tickets else None
    if settings.sealed_tickets and seal is None:
        raise TicketsDisabledError("this node has no active seal key: run `make keys`")
    ticket = issue(
        signer,
        project=project,
        config=binding.config,
        locked=binding.locked,
        ttl=ttl,
        now=services.clock.now(),
        issuer=settings.issuer,
        audience=settings.audience,
        max_bytes=settings.ticket_max_bytes,
        seal=seal,
        api_key_id=api_key_id,
    )
    services.replay.minted(ticket.jti, ticket.issued_at)
    services.metrics.tickets_minted.inc()
    return ticket


async def mint(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    # Order of checks (docs/api.md): 503, then 401, then 413, then the 400s.
    signer = require_signer(services)
    headers = first_headers(request.scope)  # one pass for the three headers read here
    authorization, raw_host = headers.get(b"authorization"), headers.get(b"host")
    api_key = services.api_keys.check(bearer_token(_text(authorization)))
    if services.revocations.revoked_key(api_key.id) is not None:
        raise InvalidCredentialsError("the API key was revoked")
    raw = await read_body(request, limit=MAX_BODY_BYTES, declared_length=headers.get(b"content-length"))
    ttl, binding = read_request(raw, services.registry)
    host = _text(raw_host)
    check_host(services, host)
    assert api_key.project is not None  # noqa: S101 - ApiKeyStore.check refuses project-less keys
    ticket = issue_ticket(
        services, signer, project=api_key.project, binding=binding, ttl=ttl, api_key_id=api_key.id
    )
    logger.info(
        "minted ticket",
        extra=fields(
            tid=tid(ticket.jti),
            kid=ticket.kid,
            project=api_key.project,
            key=api_key.id,
            ttl=ttl,
            bound=",".join(sorted(binding.config)) or "-",
            locked=",".join(binding.locked) or "-",
        ),
    )
    return JSONResponse(
        {
            "client_secret": ticket.token,
            "expires_at": rfc3339(ticket.expires_at),
            "ws_url": ws_url(services, request, host, ticket.token),
        },
        headers=NO_STORE,
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
