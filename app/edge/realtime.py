"""`GET /v3/realtime`: every check before `accept()`, then the session protocol.

Order (docs/api.md): credentials, ticket or bearer key, revocations, Origin, the project's daily
audio quota, its session cap (fleet-wide leases on Redis), the replay store.
A refusal is an HTTP denial response (the ASGI `websocket.http.response` extension): status and
the JSON error body, never an upgrade. A ticket is consumed only when every earlier check passed.
The credential, ticket and Origin checks themselves are in `app.edge.handshake`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from app import logs, redaction
from app.edge.handshake import check_origin, read_credentials, verify_ticket
from app.edge.leases import SessionRecord
from app.edge.proxies import first_headers
from app.edge.responses import error_response
from app.edge.revocations import Subject, refusal
from app.edge.services import Services
from app.exceptions import RealtimeError, ReplayStoreUnavailableError
from app.logs import fields
from app.session.binding import Binding
from app.session.core import SessionCore
from app.session.driver import SessionDriver, new_session_id
from app.session.events import encode_event
from app.tickets.claims import tid
from app.tickets.ticket import Ticket

logger = logging.getLogger(__name__)

#: The ASGI scope extension through which the edge's WebSocket protocol says whether a received
#: message already waits (`app.server.connections`).
WAITING_EXTENSION = "realtime.message_waiting"
#: The one through which it writes a text message at once when nothing would make the send wait.
SEND_NOW_EXTENSION = "realtime.send_text_now"


class WebSocketTransport:
    """The session loop's view of a Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        # Offered by the edge's own WebSocket protocol (app.server.connections); absent under another server.
        extensions = websocket.scope.get("extensions") or {}
        self._waiting: Callable[[], bool] | None = extensions.get(WAITING_EXTENSION)
        self._send_now: Callable[[str], bool] | None = extensions.get(SEND_NOW_EXTENSION)

    def waiting(self) -> bool:
        """Whether a message is queued (receive returns without a suspension); True when unknown."""
        return self._waiting is None or self._waiting()

    async def receive(self) -> str | bytes | None:
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, WebSocketDisconnected):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, event: dict[str, Any] | str) -> None:
        # Configured secrets (provider and relay keys) never reach the client, whoever quoted them.
        text = redaction.redact_secrets(event if isinstance(event, str) else encode_event(event))
        if self._send_now is not None and self._send_now(text):
            return  # written without a pass through the ASGI layers
        try:
            await self._websocket.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected):
            # The client vanished mid-send: nothing to tell it; receive() reports it gone next.
            logger.debug("send to a closed WebSocket dropped")

    async def close(self, code: int, reason: str = "") -> None:
        try:
            await self._websocket.close(code, redaction.redact_secrets(reason))
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # already closed by the client or the server: nothing left to say


async def realtime(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    started = time.perf_counter()
    ticket: Ticket | None = None
    held = leased = False
    project = "-"
    session_id = new_session_id()
    try:
        headers = first_headers(websocket.scope)
        credentials = read_credentials(websocket, headers)
        now = services.clock.now()
        if credentials.ticket is not None:
            ticket = await verify_ticket(services, credentials.ticket)
            services.replay.admits(ticket.issued_at, ticket.jti)  # a fresh memory:// store's window
            project, binding = ticket.project, Binding(ticket.config, ticket.locked)
            subject = Subject(project, ticket.api_key_id, ticket.kid, ticket.issued_at, session_id)
        else:
            assert credentials.api_key is not None  # noqa: S101 - read_credentials guarantees one
            api_key = services.api_keys.check(credentials.api_key)
            project, binding = str(api_key.project), None
            subject = Subject(project, api_key.id, None, now, session_id)
        # Revoked key, project or signing key: refused before anything else is spent on it.
        if not services.revocations.check(subject):
            await services.revocations.refresh()  # not following the store now: read it (or 503)
            services.revocations.check(subject)
        check_origin(services, headers)
        if services.quota is not None:
            await services.quota.check(project)
        # The per-project cap: a lease across the fleet (Redis), else a slot in this process; held
        # until the session ends.
        model = binding.config.get("model") if binding is not None else None
        record = SessionRecord(
            session_id,
            project,
            services.edge,
            now,
            subject.api_key_id,
            model if isinstance(model, str) else None,
        )
        cap = services.settings.max_sessions_per_project
        if services.leases is not None:
            if cap:  # the count must be exact: the lease is taken now (without a cap, in a batch)
                await services.leases.acquire(record, cap=cap)
                leased = True
                if services.lease_keeper is not None:
                    services.lease_keeper.taken(record)
        else:
            services.sessions.hold(project, cap=cap)
            held = True
        if ticket is not None:
            await services.replay.consume(ticket.jti, expires_at=ticket.expires_at)
    except RealtimeError as exc:
        if isinstance(exc, ReplayStoreUnavailableError):  # replay, revocations, leases or quota
            services.metrics.replay_store_errors.inc()
        if held:
            services.sessions.release(project)
        if leased and services.leases is not None:
            await services.leases.release(record)
        _log(services, exc.code, ticket, started, None)
        await websocket.send_denial_response(error_response(exc))
        logs.DENIED.set(True)
        return
    _log(services, "ok", ticket, started, session_id)
    services.metrics.session_opened(project)
    opened = time.monotonic()
    core: SessionCore | None = None
    driver: SessionDriver | None = None
    try:
        await websocket.accept(subprotocol=credentials.subprotocol())
        core = SessionCore(
            session_id,
            project=project,
            binding=binding,
            settings=services.settings,
            registry=services.registry,
            now=services.clock.now(),
        )
        driver = SessionDriver(
            core, WebSocketTransport(websocket), upstream=services.upstream, clock=services.clock
        )
        # The project's slot was taken above. A revocation made while the checks above awaited
        # is not missed: the registry is asked once more as the session joins it.
        if (late := services.revocations.matching(subject)) is not None:
            driver.revoke(refusal(late).message.replace("the ticket's", "this session's", 1))
        await services.sessions.run(driver, record=record, subject=subject)
        services.metrics.session_usage(project, core.usage)
    finally:
        seconds = time.monotonic() - opened
        code = driver.end_code if driver is not None else "client_gone"
        provider = session_provider(services, driver)
        services.metrics.session_closed(project, provider=provider, code=code, seconds=seconds)
        if held:
            services.sessions.release(project)
        if leased and services.leases is not None:
            await services.leases.release(record)
        if services.lease_keeper is not None:
            services.lease_keeper.ended(record)
        if services.quota is not None and core is not None and core.model is not None:
            # What the session relayed both ways (app/session/usage.py): the quota counts the same seconds
            # as realtime_audio_seconds_total.
            usage = core.usage
            await services.quota.record_audio(project, usage.input_audio_seconds + usage.output_audio_seconds)
        logger.info(
            "session ended",
            extra=fields(
                session_id=session_id,
                tid=tid(ticket.jti) if ticket is not None else "-",
                project=project,
                code=code,
                provider=provider,
                duration_s=round(seconds, 3),
                **(driver.usage_fields() if driver is not None else {}),
            ),
        )


def session_provider(services: Services, driver: SessionDriver | None) -> str:
    """Who answered the session: `local` or `relay`, else the model's provider (`openai`, `xai`,
    `gemini`); `none` for a session that never started."""
    upstream = services.settings.upstream
    if upstream != "providers":
        return upstream
    model = driver.core.model if driver is not None else None
    return model.id.split("/", 1)[0] if model is not None else "none"


def _log(
    services: Services,
    code: str,
    ticket: Ticket | None,
    started: float,
    session_id: str | None,
) -> None:
    """The redemption line: `redemption <code>` with the ticket's `tid` and, when accepted, the
    session id its session-end line carries too."""
    services.metrics.redemption(code).inc()
    values: dict[str, object] = {"tid": tid(ticket.jti) if ticket else "-"}
    if session_id is not None:
        values["session_id"] = session_id
    values.update(
        kid=ticket.kid if ticket else "-",
        project=ticket.project if ticket else "-",
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    logger.info("redemption %s", code, extra=fields(**values))
