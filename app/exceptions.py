"""The one error tree of the service; every leaf carries the machine `code` clients see.

    RealtimeError                      code, status, message, details
    ├── SettingsError                  an environment variable is invalid (start-up stops)
    ├── KeySetError                    keys/ cannot be loaded or changed as asked
    ├── RequestError (400)
    │   ├── InvalidJSONError           invalid_json
    │   ├── InvalidRequestError        invalid_request
    │   ├── UnknownLockedFieldError    unknown_locked_field
    │   ├── TicketTooLargeError        ticket_too_large
    │   └── AmbiguousTicketError       ambiguous_ticket
    ├── RequestTooLargeError (413)     request_too_large
    ├── AuthenticationError (401)
    │   ├── MissingCredentialsError    missing_credentials
    │   ├── InvalidCredentialsError    invalid_credentials
    │   └── TicketError
    │       ├── InvalidTicketError     invalid_ticket
    │       ├── TicketExpiredError     ticket_expired (details.server_time)
    │       ├── UnknownKeyError        unknown_key
    │       ├── TicketReplayedError    ticket_replayed
    │       ├── TicketNotRedeemableError ticket_not_redeemable
    │       └── TicketRevokedError     ticket_revoked
    ├── ForbiddenError (403)           forbidden (a management key acting outside its project)
    ├── NotFoundError (404)            not_found
    ├── OriginNotAllowedError (403)    origin_not_allowed
    ├── TooManySessionsError (429)     too_many_sessions
    ├── QuotaExceededError (429)       quota_exceeded (retry_after)
    ├── UnavailableError (503)         retry_after
    │   ├── TicketsDisabledError       tickets_disabled
    │   ├── ReplayStoreUnavailableError replay_store_unavailable
    │   ├── ReplayStoreFullError       replay_store_full
    │   ├── TooManyConnectionsError    too_many_connections
    │   └── UnsupportedServerError     unsupported_server (started outside `python -m app.serve`)
    ├── ConfigError (400 at the mint, an `error` event in a session)
    │   ├── InvalidConfigError         invalid_config
    │   ├── MissingModelError          missing_model
    │   ├── UnknownModelError          unknown_model
    │   ├── UnsupportedVoiceError      unsupported_voice
    │   ├── UnsupportedReasoningEffortError unsupported_reasoning_effort
    │   ├── UnsupportedTurnDetectionError   unsupported_turn_detection
    │   ├── UnsupportedModalitiesError      unsupported_modalities
    │   ├── UnsupportedTranslationError     unsupported_translation
    │   ├── FieldNotUpdatableError     field_not_updatable
    │   └── SessionUpdateUnsupportedError session_update_unsupported
    ├── ProtocolError (session events)
    │   ├── AlreadyStartedError        already_started
    │   ├── InvalidEventError          invalid_event
    │   ├── SessionNotStartedError     session_not_started
    │   └── UnsupportedEventError      unsupported_event (the session's provider has no counterpart)
    └── UpstreamError                  upstream_error

Domain code raises these; only the endpoint modules turn them into HTTP or WebSocket answers. The
session's branches, `ConfigError` and `ProtocolError` with their leaves, are in `app.sessionerrors`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RealtimeError(Exception):
    """Base of every error the service raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class SettingsError(RealtimeError):
    code = "invalid_setting"

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class KeySetError(RealtimeError):
    code = "key_set_error"


# 400 -----------------------------------------------------------------------------------------


class RequestError(RealtimeError):
    status = 400
    code = "invalid_request"


class InvalidJSONError(RequestError):
    code = "invalid_json"


class InvalidRequestError(RequestError):
    code = "invalid_request"


class UnknownLockedFieldError(RequestError):
    code = "unknown_locked_field"

    def __init__(self, field: str) -> None:
        super().__init__(f"locked_fields names an unknown config field: {field!r}")
        self.field = field


class TicketTooLargeError(RequestError):
    code = "ticket_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the ticket would be {size} bytes, over the limit of {limit} bytes; "
            "bind less config (for example shorter instructions or fewer tools)",
            details={"size": size, "limit": limit},
        )
        self.size = size
        self.limit = limit


class AmbiguousTicketError(RequestError):
    code = "ambiguous_ticket"


class RequestTooLargeError(RealtimeError):
    status = 413
    code = "request_too_large"


# 401 -----------------------------------------------------------------------------------------


class AuthenticationError(RealtimeError):
    status = 401
    code = "unauthorized"


class MissingCredentialsError(AuthenticationError):
    code = "missing_credentials"


class InvalidCredentialsError(AuthenticationError):
    code = "invalid_credentials"


class TicketError(AuthenticationError):
    code = "invalid_ticket"


class InvalidTicketError(TicketError):
    code = "invalid_ticket"


class TicketExpiredError(TicketError):
    code = "ticket_expired"

    def __init__(self, message: str, *, server_time: str) -> None:
        super().__init__(message, details={"server_time": server_time})
        self.server_time = server_time


class UnknownKeyError(TicketError):
    code = "unknown_key"

    def __init__(self, kid: str, *, sealed: bool = False) -> None:
        verb = "sealed" if sealed else "signed"
        super().__init__(f"the ticket was {verb} with a key this server does not know")
        self.kid = kid
        self.sealed = sealed  # the seal key (outer JWE) rather than the signing key (inner JWS)


class TicketReplayedError(TicketError):
    code = "ticket_replayed"


class TicketNotRedeemableError(TicketError):
    code = "ticket_not_redeemable"


class TicketRevokedError(TicketError):
    code = "ticket_revoked"


# 403, 429, 503 -------------------------------------------------------------------------------


class OriginNotAllowedError(RealtimeError):
    status = 403
    code = "origin_not_allowed"


class ForbiddenError(RealtimeError):
    status = 403
    code = "forbidden"


class NotFoundError(RealtimeError):
    status = 404
    code = "not_found"


class TooManySessionsError(RealtimeError):
    status = 429
    code = "too_many_sessions"


class QuotaExceededError(RealtimeError):
    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(RealtimeError):
    status = 503
    code = "unavailable"

    def __init__(
        self, message: str, *, retry_after: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class TicketsDisabledError(UnavailableError):
    code = "tickets_disabled"


class ReplayStoreUnavailableError(UnavailableError):
    code = "replay_store_unavailable"


class ReplayStoreFullError(UnavailableError):
    code = "replay_store_full"


class TooManyConnectionsError(UnavailableError):
    code = "too_many_connections"


class UnsupportedServerError(UnavailableError):
    """The app was started by a server without the edge's bounds (`app.main.UnsupportedStart`)."""

    code = "unsupported_server"


class UpstreamError(RealtimeError):
    status = 502
    code = "upstream_error"
