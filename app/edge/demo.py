"""The demo page at `GET /` and its dev-only mint route `POST /dev/ticket` (on with `REALTIME_DEV`)."""

from __future__ import annotations

import functools
import ipaddress
import logging
from importlib import resources
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from app.edge.mint import DEFAULT_TTL, issue_ticket, require_signer
from app.edge.responses import NO_STORE
from app.edge.services import Services
from app.exceptions import InvalidRequestError
from app.logs import fields
from app.session.binding import prepare_binding
from app.tickets.claims import tid
from app.tickets.ticket import rfc3339

logger = logging.getLogger(__name__)

DEV_PROJECT = "dev"
DEV_MODEL = "openai/gpt-realtime-2"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _static(name: str) -> str:
    return resources.files("app").joinpath("static", name).read_text(encoding="utf-8")


@functools.cache
def _served() -> dict[str, str]:
    """The files `GET /static/{name}` serves, by exact name, with their media types.

    A request names one of these or gets 404: the name from the URL never reaches the file system
    (a NUL, `..`, a very long name or an odd encoding cannot make the lookup fail).
    """
    files = resources.files("app").joinpath("static").iterdir()
    return {
        item.name: STATIC_TYPES[suffix]
        for item in files
        if item.is_file() and (suffix := item.name[item.name.rfind(".") :]) in STATIC_TYPES
    }


#: The browser client package (`clients/js/` of a source checkout), which the demo page imports.
CLIENT_DIR = Path(__file__).resolve().parent.parent.parent / "clients" / "js"


@functools.cache
def _client_files() -> dict[str, str]:
    """The package's modules `GET /client/{name}` serves, by exact name (none outside a checkout)."""
    if not CLIENT_DIR.is_dir():
        return {}
    return {
        item.name: STATIC_TYPES[".js"]
        for item in CLIENT_DIR.iterdir()
        if item.is_file() and item.suffix == ".js"
    }


#: Host names the dev mint route answers: the machine itself, with any port. Another name means the
#: request came through DNS that points at loopback (rebinding) from some other site's page.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _is_loopback_host(host: str | None) -> bool:
    """`Host` names this machine: a loopback name, optionally followed by `:<port>`."""
    value = (host or "").strip().lower()
    if value.startswith("["):
        end = value.find("]") + 1
        name, port = value[:end], value[end:]
    else:
        name, colon, digits = value.partition(":")
        port = colon + digits
    return name.rstrip(".") in LOOPBACK_HOSTS and (port == "" or (port[0] == ":" and port[1:].isdigit()))


#: Headers a proxy adds. A request with any of them came through a proxy (whose own address is
#: loopback when it runs on this machine), so its client is somewhere else.
PROXY_HEADERS = (b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded")


def _from_this_machine(request: Request) -> bool:
    """The request came straight from a loopback address, under one loopback `Host` name.

    Any proxy header refuses it: `X-Forwarded-*` from a trusted proxy (127.0.0.1 by default)
    replaces the scope's client and `Host`, and a page can set them on its own same-origin
    requests. With none of them the scope's client is the socket's peer.
    """
    hosts = [value for name, value in request.scope["headers"] if name == b"host"]
    if len(hosts) != 1 or not _is_loopback_host(hosts[0].decode("latin-1")):
        return False
    if any(name in PROXY_HEADERS for name, _ in request.scope["headers"]):
        return False
    peer = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = _served().get(name)
    if media_type is None:
        raise HTTPException(404, "no such file")
    return Response(_static(name), media_type=media_type, headers={"Cache-Control": "no-cache"})


async def client(request: Request) -> Response:
    """A module of the browser client package, in dev mode only (as `POST /dev/ticket`)."""
    services: Services = request.app.state.services
    media_type = _client_files().get(request.path_params["name"]) if services.settings.dev else None
    if media_type is None:
        raise HTTPException(404, "no such file")
    body = (CLIENT_DIR / request.path_params["name"]).read_text(encoding="utf-8")
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def dev_ticket(request: Request) -> JSONResponse:
    """Mint a ticket for project `dev` binding a model, with no API key: for the demo page only.

    Answers 404 unless `REALTIME_DEV=true` (which `make run` sets): a public deployment never has it.
    Even then it answers only requests from a loopback address, with one `Host` that is a loopback
    name (`127.0.0.1`, `localhost`, `[::1]`, any port) and no proxy header, else 404: a page on
    another site cannot mint through a DNS name rebound to 127.0.0.1, since its requests carry that
    name as `Host`, and another machine cannot mint on a server bound to 0.0.0.0.
    """
    services: Services = request.app.state.services
    if not services.settings.dev:
        raise HTTPException(404, "the dev mint route is off (REALTIME_DEV=false)")
    if not _from_this_machine(request):
        raise HTTPException(404, "the dev mint route answers only loopback clients on a loopback host name")
    model = request.query_params.get("model", DEV_MODEL)
    if len(model) > 200:
        raise InvalidRequestError("model name too long")
    signer = require_signer(services)
    binding = prepare_binding({"model": model}, [], services.registry)
    ticket = issue_ticket(services, signer, project=DEV_PROJECT, binding=binding, ttl=DEFAULT_TTL)
    logger.info(
        "minted dev ticket",
        extra=fields(tid=tid(ticket.jti), kid=ticket.kid, project=DEV_PROJECT, model=model),
    )
    return JSONResponse(
        {
            "client_secret": ticket.token,
            "expires_at": rfc3339(ticket.expires_at),
            "model": model,
            "upstream": services.settings.upstream,  # the page says who answers
        },
        headers=NO_STORE,
    )
