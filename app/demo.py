"""The demo page at `GET /` and its dev-only mint route `POST /dev/ticket` (on with `REALTIME_DEV`)."""

from __future__ import annotations

import logging
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from app.exceptions import InvalidRequestError
from app.mint import DEFAULT_TTL, issue_ticket, require_signer
from app.responses import NO_STORE
from app.services import Services
from app.session import prepare_binding
from app.tickets import rfc3339

logger = logging.getLogger(__name__)

DEV_PROJECT = "dev"
DEV_MODEL = "openai/gpt-realtime-2"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _static(name: str) -> str:
    return resources.files("app").joinpath("static", name).read_text(encoding="utf-8")


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
        raise HTTPException(404, "no such file")
    try:
        text = _static(name)
    except FileNotFoundError:
        raise HTTPException(404, "no such file") from None
    return Response(text, media_type=STATIC_TYPES[suffix], headers={"Cache-Control": "no-cache"})


async def dev_ticket(request: Request) -> JSONResponse:
    """Mint a ticket for project `dev` binding a model, with no API key: for the demo page only.

    Answers 404 unless `REALTIME_DEV=true` (which `make run` sets): a public deployment never has it.
    """
    services: Services = request.app.state.services
    if not services.settings.dev:
        raise HTTPException(404, "the dev mint route is off (REALTIME_DEV=false)")
    model = request.query_params.get("model", DEV_MODEL)
    if len(model) > 200:
        raise InvalidRequestError("model name too long")
    signer = require_signer(services)
    binding = prepare_binding({"model": model}, [], services.registry)
    ticket = issue_ticket(services, signer, project=DEV_PROJECT, binding=binding, ttl=DEFAULT_TTL)
    logger.info("minted dev ticket kid=%s project=%s model=%s", ticket.kid, DEV_PROJECT, model)
    return JSONResponse(
        {
            "client_secret": ticket.token,
            "expires_at": rfc3339(ticket.expires_at),
            "model": model,
            "upstream": services.settings.upstream,  # the page says who answers
        },
        headers=NO_STORE,
    )
