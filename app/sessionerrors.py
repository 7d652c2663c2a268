"""The session's branches of the error tree drawn in `app.exceptions`: config and protocol errors."""

from __future__ import annotations

from typing import Any

from app.exceptions import RealtimeError

# Session config (400 at the mint, non-fatal `error` events in a session) ---------------------


class ConfigError(RealtimeError):
    status = 400
    code = "invalid_config"

    def __init__(
        self, message: str, *, field: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.field = field


class InvalidConfigError(ConfigError):
    code = "invalid_config"


class MissingModelError(ConfigError):
    code = "missing_model"


class UnknownModelError(ConfigError):
    code = "unknown_model"


class UnsupportedVoiceError(ConfigError):
    code = "unsupported_voice"


class UnsupportedReasoningEffortError(ConfigError):
    code = "unsupported_reasoning_effort"


class UnsupportedTurnDetectionError(ConfigError):
    code = "unsupported_turn_detection"


class UnsupportedModalitiesError(ConfigError):
    code = "unsupported_modalities"


class UnsupportedTranslationError(ConfigError):
    code = "unsupported_translation"


class FieldNotUpdatableError(ConfigError):
    code = "field_not_updatable"


class SessionUpdateUnsupportedError(ConfigError):
    code = "session_update_unsupported"


# Session protocol ----------------------------------------------------------------------------


class ProtocolError(RealtimeError):
    code = "invalid_event"


class AlreadyStartedError(ProtocolError):
    code = "already_started"


class InvalidEventError(ProtocolError):
    code = "invalid_event"


class SessionNotStartedError(ProtocolError):
    code = "session_not_started"


class UnsupportedEventError(ProtocolError):
    code = "unsupported_event"
