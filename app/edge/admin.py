"""The admin API: live sessions across the fleet, revocations; management keys only (docs/api.md).

    GET  /v3/admin/sessions?project=   live sessions (id, project, model, edge, started, API key id)
    POST /v3/admin/revocations         {"session_id"} | {"api_key_id"} | {"project"} | {"kid"}, "reason"?
    GET  /v3/admin/revocations         the revocations in force

A management key made for one project sees and revokes that project's sessions, tickets and keys
only; one made with `PROJECT=*` acts on every project, and alone may revoke a signing key (which
signs every project's tickets). Something of another project is answered as if it did not exist
(`404 not_found`), except a project named outright (`403 forbidden`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request

from app.edge.mint import read_body
from app.edge.responses import NO_STORE, JSONResponse
from app.edge.revocations import KINDS, MAX_REASON, MAX_VALUE, Kind, Revocation, lifetime
from app.edge.services import Services
from app.exceptions import (
    ForbiddenError,
    InvalidCredentialsError,
    InvalidJSONError,
    InvalidRequestError,
    KeySetError,
    MissingCredentialsError,
    NotFoundError,
)
from app.tickets.apikeys import ApiKey, revoke_key
from app.tickets.bearer import bearer_token
from app.tickets.claims import rfc3339

logger = logging.getLogger(__name__)

EVERY_PROJECT = "*"
MAX_BODY_BYTES = 16 * 1024
FIELDS: dict[str, Kind] = {
    "session_id": "session",
    "api_key_id": "api_key",
    "project": "project",
    "kid": "kid",
}
assert set(FIELDS.values()) == set(KINDS)  # noqa: S101 - a kind without a field would be unreachable


def management_key(request: Request) -> ApiKey:
    """The request's management key (401 for none, a runtime key, or an unknown one)."""
    services: Services = request.app.state.services
    authorization = request.headers.get("authorization")
    if not authorization:
        raise MissingCredentialsError("send `Authorization: Bearer <management key>` (opmak-...)")
    key = services.api_keys.check_management(bearer_token(authorization))
    if services.revocations.revoked_key(key.id) is not None:  # before its file's mark is read again
        raise InvalidCredentialsError("the API key is revoked")
    return key


def _covers(key: ApiKey, project: str | None) -> bool:
    return key.project == EVERY_PROJECT or (project is not None and key.project == project)


def revocation_json(revocation: Revocation) -> dict[str, Any]:
    return {
        "kind": revocation.kind,
        "value": revocation.value,
        "project": revocation.project,
        "reason": revocation.reason,
        "revoked_at": rfc3339(revocation.at),
        "expires_at": rfc3339(revocation.expires_at),
    }


async def list_sessions(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    key = management_key(request)
    project = request.query_params.get("project") or None
    if project is None and key.project != EVERY_PROJECT:
        project = key.project
    if project is not None and not _covers(key, project):
        raise ForbiddenError("this management key acts on its own project only")
    if services.leases is not None:
        sessions = await services.leases.sessions(project)
    else:
        sessions = [
            record.to_json()
            for record in services.sessions.records()
            if project is None or record.project == project
        ]
    return JSONResponse({"data": sessions}, headers=NO_STORE)


async def list_revocations(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    key = management_key(request)
    entries = [
        revocation_json(revocation)
        for revocation in await services.revocations.entries()
        if key.project == EVERY_PROJECT or revocation.project == key.project
    ]
    return JSONResponse({"data": entries}, headers=NO_STORE)


def _read_revocation(raw: bytes) -> tuple[str, str, str]:
    """(field, value, reason) from the body, exactly one field of FIELDS and an optional reason."""
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise InvalidJSONError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidJSONError("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS) - {"reason"})
    if unknown:
        raise InvalidRequestError(f"unknown field {unknown[0]!r}: give one of {', '.join(FIELDS)}")
    named = [name for name in FIELDS if body.get(name) is not None]
    if len(named) != 1:
        raise InvalidRequestError(f"give exactly one of {', '.join(FIELDS)}")
    value, reason = body[named[0]], body.get("reason") or ""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_VALUE:
        raise InvalidRequestError(f"{named[0]} must be a non-empty string of at most {MAX_VALUE} characters")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidRequestError(f"reason must be a string of at most {MAX_REASON} characters")
    return named[0], value.strip(), reason


async def _owner(services: Services, key: ApiKey, field: str, value: str) -> str | None:
    """The project the named thing belongs to, once this key may act on it."""
    if field == "project":
        if not _covers(key, value):
            raise ForbiddenError("this management key acts on its own project only")
        return value
    if field == "kid":
        if key.project != EVERY_PROJECT:
            raise ForbiddenError(
                "a signing key signs every project's tickets: use a PROJECT=* management key"
            )
        return None
    if field == "api_key_id":
        stored = services.api_keys.by_id(value)
        owner = stored.project if stored is not None else None
        if key.project == EVERY_PROJECT or (owner is not None and owner == key.project):
            return owner
        raise NotFoundError(f"no API key {value!r} in this key's project")
    if services.leases is not None:
        found = await services.leases.find(value)
        owner = str(found.get("project")) if found is not None else None
    else:
        owner = next((r.project for r in services.sessions.records() if r.session_id == value), None)
    if owner is None or not _covers(key, owner):
        raise NotFoundError(f"no live session {value!r} in this key's project")
    return owner


async def revoke(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    key = management_key(request)
    raw = await read_body(request, limit=MAX_BODY_BYTES, declared_length=None)
    field, value, reason = _read_revocation(raw)
    owner = await _owner(services, key, field, value)
    settings, now = services.settings, services.clock.now()
    span = lifetime(
        leeway=settings.leeway_seconds,
        skew_margin=settings.clock_skew_margin_seconds,
        max_duration=settings.max_duration_seconds,
    )
    revocation = Revocation(FIELDS[field], value, now, now + span, owner, reason)
    await services.revocations.add(revocation)
    if field == "api_key_id" and owner is not None:
        await _mark_key_revoked(services, value, int(now))
    logger.info(
        "revoked %s %s (project %s) with management key %s", revocation.kind, value, owner or "*", key.id
    )
    return JSONResponse({"revocation": revocation_json(revocation)}, status_code=201, headers=NO_STORE)


async def _mark_key_revoked(services: Services, key_id: str, now: int) -> None:
    """Mark the key revoked in the API key file, as `make revoke-api-key` does: the fleet's
    revocation entry expires after the longest ticket and session, the file's mark does not.

    A key file this node cannot write (a read-only copy) keeps the entry alone, said in a WARNING.
    """
    path = services.settings.api_keys_path
    try:
        await asyncio.to_thread(revoke_key, path, key_id, now=now)
    except (OSError, KeySetError) as exc:
        logger.warning(
            "API key %s revoked across the fleet, but not marked in %s (%s): it is refused again only "
            "until the revocation expires; run `make revoke-api-key ID=%s` where the key file is written",
            key_id,
            path,
            type(exc).__name__,
            key_id,
        )
