"""Session config: the schema and overlay of a binding (docs/protocol.md), checks against a model.

Pure functions over plain JSON values; the mint and the WebSocket session both use them.

    parse_config(raw)            schema check, unknown fields and wrong types are `invalid_config`
    prepare_binding(cfg, locked) what a ticket binds: non-zero fields of `cfg`, plus locked names
    overlay(client, binding)     the effective config: bound fields win, locked-unbound forced to zero
    check_capabilities(cfg, reg) the model can do what the config asks (in `app.session.models`)
    check_update(old, new, info) one-shot fields stay as they were after the start
    start_config / update_config the effective config of a session.start / session.update
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.exceptions import InvalidRequestError, UnknownLockedFieldError
from app.session.models import ModelInfo, ModelRegistry, check_capabilities
from app.sessionerrors import FieldNotUpdatableError, InvalidConfigError

_STRICT = ConfigDict(strict=True, extra="forbid")
Text = Annotated[str, Field(max_length=65_536)]


class TurnDetection(BaseModel):
    model_config = _STRICT
    type: Literal["server_vad", "semantic_vad", "none"] | None = None
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    prefix_padding_ms: Annotated[int, Field(ge=0)] | None = None
    silence_duration_ms: Annotated[int, Field(ge=0)] | None = None


class Tool(BaseModel):
    model_config = _STRICT
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: Text | None = None
    parameters: dict[str, Any] | None = None


class SessionConfig(BaseModel):
    """The schema of `config` in the mint body, `session.start` and `session.update`."""

    model_config = _STRICT
    model: Annotated[str, Field(max_length=200)] | None = None
    instructions: Text | None = None
    voice: Annotated[str, Field(max_length=100)] | None = None
    modalities: list[Literal["audio", "text"]] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    input_audio_format: Literal["pcm16"] | None = None
    output_audio_format: Literal["pcm16"] | None = None
    input_transcription: bool | None = None
    input_transcription_model: Annotated[str, Field(max_length=200)] | None = None
    output_transcription: bool | None = None
    turn_detection: TurnDetection | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    translation_target_language: (
        Annotated[str, Field(pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")] | None
    ) = None


CONFIG_FIELDS: tuple[str, ...] = tuple(SessionConfig.model_fields)
BOOLEAN_FIELDS = frozenset({"input_transcription", "output_transcription"})

#: Deepest nesting of objects and arrays a mint body or a session config may have. Real configs
#: (tool parameter schemas included) stay far below it; a config hundreds of levels deep would
#: strain every edge that decodes it and every upstream it is sent to.
MAX_NESTING = 32
MAX_NAME_IN_MESSAGE = 64  # longest member name an error message quotes whole


def shortened(name: str) -> str:
    """A member name as an error quotes it: at most `MAX_NAME_IN_MESSAGE` characters, then `...`."""
    return name if len(name) <= MAX_NAME_IN_MESSAGE else name[:MAX_NAME_IN_MESSAGE] + "..."


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def is_zero(value: Any) -> bool:
    """`""`, `false`, `0`, `0.0`, `[]`, `{}` and `null` are zero values (docs/api.md)."""
    return value is None or (isinstance(value, str | bool | int | float | list | dict) and not value)


def parse_config(raw: Any) -> dict[str, Any]:
    """Check `raw` against the schema; return its fields, `null` ones dropped, values as sent.

    Raises:
        InvalidConfigError: not an object, an unknown field, a wrong type or a value out of range,
            nesting deeper than `MAX_NESTING`; the message and `field` name the offending field.
    """
    if not isinstance(raw, dict):
        raise InvalidConfigError("config must be a JSON object")
    for name, value in raw.items():
        if nesting_exceeds(value, MAX_NESTING - 1):
            where = shortened(name)
            raise InvalidConfigError(
                f"config.{where}: nested deeper than {MAX_NESTING} levels",
                field=where,
                details={"field": where},
            )
    try:
        SessionConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(shortened(str(part)) for part in error["loc"]) or "config"
        name = shortened(str(error["loc"][0])) if error["loc"] else None
        reason = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        raise InvalidConfigError(
            f"config.{where}: {reason}", field=name, details={"field": name} if name else None
        ) from None
    modalities = raw.get("modalities")
    if modalities and len(set(modalities)) != len(modalities):
        raise InvalidConfigError(
            "config.modalities: list each modality once", field="modalities", details={"field": "modalities"}
        )
    return {name: value for name, value in raw.items() if value is not None}


def zero_of(name: str) -> Any:
    """The effective value of a field forced to zero: `false` for booleans, else absent (None)."""
    return False if name in BOOLEAN_FIELDS else None


@dataclass(frozen=True)
class Binding:
    """What a ticket fixes: `config` (bound non-zero values) and `locked` (names, bound or forced)."""

    config: dict[str, Any] = field(default_factory=dict)
    locked: tuple[str, ...] = ()

    @property
    def forced(self) -> frozenset[str]:
        """Locked names without a bound value: forced to their zero value."""
        return frozenset(name for name in self.locked if name not in self.config)


def overlay(client: dict[str, Any], binding: Binding | None) -> dict[str, Any]:
    """The effective config: the client's, every bound field overwritten, locked-unbound forced to zero.

    Silent by design: an attempted override is not an error. Lists and objects are replaced whole.
    """
    effective = dict(client)
    if binding is None:
        return effective
    effective.update(binding.config)
    for name in binding.forced:
        zero = zero_of(name)
        if zero is None:
            effective.pop(name, None)
        else:
            effective[name] = zero
    return effective


def check_update(before: dict[str, Any], after: dict[str, Any], info: ModelInfo) -> None:
    """A `session.update` may not change the model or the model's one-shot fields.

    Raises:
        FieldNotUpdatableError: naming the field that would change.
    """
    for name in ("model", *info.fixed_after_start):
        if before.get(name) != after.get(name) and not (
            is_zero(before.get(name)) and is_zero(after.get(name))
        ):
            raise FieldNotUpdatableError(
                f"{name} is fixed once the session has started on {info.id}",
                field=name,
                details={"field": name},
            )


def start_config(
    config: Any, binding: Binding | None, registry: ModelRegistry
) -> tuple[dict[str, Any], ModelInfo]:
    """A `session.start`'s effective config (6.3) and its model.

    Raises:
        ConfigError: the schema, or a model that cannot do the effective config.
    """
    effective = overlay(parse_config(config), binding)
    return effective, check_capabilities(effective, registry)


def update_config(
    config: dict[str, Any],
    model: ModelInfo,
    changes: Any,
    binding: Binding | None,
    registry: ModelRegistry,
) -> tuple[dict[str, Any], ModelInfo]:
    """The effective config after a `session.update` (`null` removes a field), and its model.

    Raises:
        ConfigError: as `start_config`, or a change to the model or a one-shot field.
    """
    parsed = parse_config(changes)
    nulls = {name for name, value in changes.items() if value is None}
    merged = {name: value for name, value in {**config, **parsed}.items() if name not in nulls}
    effective = overlay(merged, binding)
    info = check_capabilities(effective, registry)
    check_update(config, effective, model)
    return effective, info


def prepare_binding(config: Any, locked_fields: Any, registry: ModelRegistry) -> Binding:
    """What a mint request binds, checked now so mistakes surface at the backend (docs/api.md).

    Raises:
        InvalidRequestError: `config` not an object, `locked_fields` not a list of strings.
        InvalidConfigError: schema failures, or `model` locked without being bound.
        UnknownLockedFieldError: a locked name that is not a config field.
        UnknownModelError and the unsupported_* errors: a bound model that cannot do the bound config.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidRequestError("config must be a JSON object", details={"field": "config"})
    if locked_fields is None:
        locked_fields = []
    if not isinstance(locked_fields, list) or not all(isinstance(name, str) for name in locked_fields):
        raise InvalidRequestError(
            "locked_fields must be a list of config field names", details={"field": "locked_fields"}
        )
    parsed = parse_config(config)
    for name in locked_fields:
        if name not in CONFIG_FIELDS:
            raise UnknownLockedFieldError(name)
    locked = tuple(dict.fromkeys(locked_fields))
    bound = {name: value for name, value in parsed.items() if not is_zero(value)}
    if "model" in locked and "model" not in bound:
        raise InvalidConfigError(
            "model is locked but not bound: the ticket could never start a session", field="model"
        )
    binding = Binding(bound, locked)
    if "model" in bound:
        check_capabilities(overlay({}, binding), registry)
    return binding


def effective_defaults(config: dict[str, Any], info: ModelInfo) -> dict[str, Any]:
    """`config` with the defaults of 6.3 and the model's filled in where a field is absent."""
    full = dict(config)
    full.setdefault("voice", info.default_voice)
    full.setdefault("modalities", list(info.modalities))
    full.setdefault("turn_detection", {"type": "server_vad"})
    full.setdefault("input_audio_format", "pcm16")
    full.setdefault("output_audio_format", "pcm16")
    return full


def describe(
    session_id: str, config: dict[str, Any], info: ModelInfo, binding: Binding | None
) -> dict[str, Any]:
    """The `session.started` event: effective model and voice (null when forced to zero), rates."""
    forced = binding.forced if binding else frozenset()
    return {
        "type": "session.started",
        "session_id": session_id,
        "model": info.id,
        "voice": None if "voice" in forced else config.get("voice") or info.default_voice,
        "input_sample_rate": info.input_sample_rate,
        "output_sample_rate": info.output_sample_rate,
        "audio_format": "pcm16",
    }
