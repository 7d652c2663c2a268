"""Client events of the session protocol (docs/protocol.md): one typed model per event, and `parse_event`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from app import strictjson
from app.exceptions import RealtimeError
from app.sessionerrors import InvalidEventError

_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Client events (docs/protocol.md). Extra members are ignored (clients add ids); missing ones are errors.
_EVENT = ConfigDict(extra="ignore", strict=True)


# `config` is checked by the config schema, so a config that is not an object is `invalid_config`
# (a failed start the client may retry), not a malformed event.
class SessionStart(BaseModel):
    model_config = _EVENT
    type: Literal["session.start"]
    config: Any = None


class SessionUpdate(BaseModel):
    model_config = _EVENT
    type: Literal["session.update"]
    config: Any


class AudioAppend(BaseModel):
    model_config = _EVENT
    type: Literal["audio.append"]
    audio: str

    @field_validator("audio")
    @classmethod
    def _base64(cls, value: str) -> str:
        # Checked without decoding (a quarter of the cost on a large frame).
        if not _is_base64(value):
            raise ValueError("audio must be base64 PCM16")
        return value


class AudioCommit(BaseModel):
    model_config = _EVENT
    type: Literal["audio.commit"]


class AudioClear(BaseModel):
    model_config = _EVENT
    type: Literal["audio.clear"]


class TextInput(BaseModel):
    model_config = _EVENT
    type: Literal["text.input"]
    text: Annotated[str, Field(min_length=1)]


class ResponseCreate(BaseModel):
    model_config = _EVENT
    type: Literal["response.create"]


class ResponseCancel(BaseModel):
    model_config = _EVENT
    type: Literal["response.cancel"]


class ToolResult(BaseModel):
    model_config = _EVENT
    type: Literal["tool.result"]
    tool_call_id: Annotated[str, Field(min_length=1)]
    tool_result: str


class ImageInput(BaseModel):
    model_config = _EVENT
    type: Literal["image.input"]
    image_url: Annotated[str, Field(min_length=1)]
    image_detail: Literal["auto", "low", "high"] | None = None


ClientEvent = Annotated[
    SessionStart
    | SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | TextInput
    | ResponseCreate
    | ResponseCancel
    | ToolResult
    | ImageInput,
    Field(discriminator="type"),
]
CLIENT_EVENTS: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


def parse_event(frame: str | bytes) -> ClientEvent:
    """One client frame as a typed event.

    Raises:
        InvalidEventError: binary, not strict JSON (`app.strictjson`), nested too deeply,
            not an object, no or unknown `type`, a missing or
            mistyped member; the message says which.
    """
    if isinstance(frame, bytes):
        raise InvalidEventError("binary frames are not part of the protocol: send JSON text frames")
    try:
        raw = strictjson.loads(frame, unique_names=False)
    except ValueError:
        raise InvalidEventError("the frame is not JSON") from None
    except RecursionError:
        raise InvalidEventError("the frame nests too deeply") from None
    if not isinstance(raw, dict):
        raise InvalidEventError("the frame is not a JSON object")
    if "type" not in raw:
        raise InvalidEventError("the event has no `type`")
    try:
        return CLIENT_EVENTS.validate_python(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise InvalidEventError(f"unknown event type {raw.get('type')!r}") from None
        where = ".".join(str(part) for part in error["loc"][1:])
        raise InvalidEventError(f"{raw['type']}: {where}: {error['msg']}") from None


# The event types relayed most (audio both ways, turn control), checked here without pydantic: the
# same rules as their models (strict strings, extra members ignored), so the same events pass. Any
# other type, and any event these checks refuse, goes through `parse_event` for its answer.
_BARE = frozenset({"audio.commit", "audio.clear", "response.create", "response.cancel"})


def forwarded(frame: str | bytes) -> dict[str, Any] | None:
    """A valid audio or turn-control event as `parse_event(frame).model_dump(exclude_none=True)`
    gives it, or None: another type, or anything `parse_event` must look at (and answer).

    orjson reads what it can (it refuses `NaN`, lone surrogates and numbers out of range, which then
    go the long way); the members used here are strings, which both read alike.
    """
    if type(frame) is not str:
        return None
    try:
        raw = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(raw) is not dict:
        return None
    kind = raw.get("type")
    if kind == "audio.append":
        audio = raw.get("audio")
        if type(audio) is str and _is_base64(audio):
            return {"type": kind, "audio": audio}
        return None
    if type(kind) is str and kind in _BARE:  # a list or an object as `type` is parse_event's to refuse
        return {"type": kind}
    return None


def _is_base64(value: str) -> bool:
    """`AudioAppend`'s rule: padded length, the alphabet, at most two `=` at the end (RFC 4648)."""
    if not value.isascii():
        return False
    encoded = value.encode("ascii")
    body = encoded.rstrip(b"=")
    return not (len(encoded) % 4 or len(encoded) - len(body) > 2 or body.translate(None, _BASE64))


def decode_relayed(frame: str) -> Any:
    """A relayed upstream frame decoded to look at its type (and an ending's code), or None.

    orjson first (a quarter of the cost); what it refuses and `json` reads (`NaN`, deep nesting,
    numbers out of range) is read by `json` as before. orjson reads integers out of 64 bits as
    floats, which changes neither a type nor a code (strings, read alike by both).
    """
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError:
        try:
            return json.loads(frame)
        except (ValueError, RecursionError):
            return None


# The wire form of an event: compact JSON. Built once: `json.dumps` with options builds a new
# encoder on every call, which costs more than encoding a small event.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def encode_event(event: dict[str, Any]) -> str:
    """`event` as compact JSON, `json`'s exact text.

    A flat event of strings (an audio frame either way) is encoded by orjson, an eighth of the cost
    on a 20 ms frame, when its output is the same text: ASCII without DEL, which `json` would escape.
    """
    if type(event) is dict and all(type(value) is str for value in event.values()):
        try:
            text = orjson.dumps(event)
        except orjson.JSONEncodeError:  # a key that is not a string, a lone surrogate
            pass
        else:
            if text.isascii() and b"\x7f" not in text:
                return text.decode("ascii")
    return _encode(event)


def error_event(exc: RealtimeError) -> dict[str, Any]:
    return {"type": "error", "error": {"code": exc.code, "message": exc.message}}
