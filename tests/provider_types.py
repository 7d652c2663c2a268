"""Strict checks of provider messages against the providers' official SDK types.

The SDK models accept members they do not declare (OpenAI's keep them as extras); the real APIs
refuse them. `check_*` parse a frame with the SDK type, then walk the frame beside the parsed model:
every member must be a field the type declares (by its JSON name, or for Google's protobuf JSON also
its field name, which the SDK itself sends at times), and every value must come back as sent.
"""

from __future__ import annotations

import base64
import enum
import json
from typing import Any

from google.genai import types as genai
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from openai.types.realtime.realtime_audio_input_turn_detection import RealtimeAudioInputTurnDetection
from pydantic import BaseModel, TypeAdapter

OPENAI_CLIENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)
OPENAI_SERVER: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
XAI_TURN_DETECTION: TypeAdapter[Any] = TypeAdapter(RealtimeAudioInputTurnDetection | None)
#: The `session` members xAI's Voice Agent API documents, and under `audio` only the formats.
XAI_SESSION = frozenset({"voice", "instructions", "turn_detection", "tools", "audio"})
#: Server events xAI sends with one member OpenAI's type does not declare.
XAI_SERVER_EXTRAS = {"conversation.item.input_audio_transcription.completed": "status"}


class Violation(AssertionError):
    """A message that the provider's SDK types do not accept as it is."""


def _differences(value: Any, sent: Any, path: str) -> list[str]:
    """Where `sent` (decoded JSON) is not what the parsed `value` declares and holds."""
    if isinstance(value, BaseModel):
        if not isinstance(sent, dict):
            return [f"{path}: an object was expected"]
        names: dict[str, str] = {}
        for name, info in type(value).model_fields.items():
            names[name] = name
            if info.alias:
                names[info.alias] = name
        found: list[str] = []
        for key, item in sent.items():
            if key not in names:
                found.append(f"{path}.{key}: not declared by {type(value).__name__}")
            else:
                found += _differences(getattr(value, names[key]), item, f"{path}.{key}")
        return found
    if isinstance(value, list | tuple):
        if not isinstance(sent, list) or len(sent) != len(value):
            return [f"{path}: a list of {len(value)} was expected"]
        return [
            line
            for index, item in enumerate(value)
            for line in _differences(item, sent[index], f"{path}[{index}]")
        ]
    if isinstance(value, bytes):
        same = isinstance(sent, str) and base64.b64decode(sent) == value
    elif isinstance(value, enum.Enum):
        same = value.value == sent
    else:
        same = value == sent and type(value) is type(sent)
    return [] if same else [f"{path}: {sent!r} came back as {value!r}"]


def _strict(model: Any, text: str) -> dict[str, Any]:
    sent = json.loads(text)
    problems = _differences(model, sent, "$")
    if problems:
        raise Violation(f"{'; '.join(problems)} in {text[:300]}")
    return dict(sent)


def check_openai_client(text: str) -> dict[str, Any]:
    """A client event the edge sent to OpenAI or xAI. Raises Violation."""
    try:
        model = OPENAI_CLIENT.validate_json(text)
    except ValueError as exc:
        raise Violation(f"not an OpenAI realtime client event: {exc}") from None
    return _strict(model, text)


def check_xai_client(text: str) -> dict[str, Any]:
    """A client event the edge sent to xAI. Raises Violation.

    xAI takes OpenAI's events, but its `session` carries `voice` and `turn_detection` at the top
    (checked with OpenAI's voice and turn detection types) and only the members xAI documents;
    the rest is checked as OpenAI's session (given the `type` xAI does not take).
    """
    message = json.loads(text)
    if not isinstance(message, dict) or message.get("type") != "session.update":
        return check_openai_client(text)
    session = dict(message.get("session") or {})
    undocumented = set(session) - XAI_SESSION
    audio = session.get("audio") or {}
    undocumented |= {f"audio.{name}" for name in set(audio) - {"input", "output"}}
    for direction in ("input", "output"):
        undocumented |= {f"audio.{direction}.{name}" for name in set(audio.get(direction) or {}) - {"format"}}
    if "type" in session or undocumented:
        raise Violation(
            f"session members xAI does not document: {sorted(undocumented | set(session) & {'type'})}"
        )
    if "turn_detection" not in session:
        raise Violation("xAI's session must say its turn detection (null: manual turns)")
    try:
        XAI_TURN_DETECTION.validate_python(session.pop("turn_detection"))
        voice = session.pop("voice", None)
        if voice is not None and not isinstance(voice, str):
            raise ValueError("voice is not a string")
    except ValueError as exc:
        raise Violation(f"not xAI's session: {exc}") from None
    check_openai_client(json.dumps({**message, "session": {"type": "realtime", **session}}))
    return dict(message)


def check_xai_server(event: dict[str, Any]) -> str:
    """A server event a fake xAI sends: OpenAI's type, with xAI's documented extra member."""
    extra = XAI_SERVER_EXTRAS.get(str(event.get("type")))
    if extra is None or extra not in event:
        return check_openai_server(event)
    check_openai_server({name: value for name, value in event.items() if name != extra})
    return json.dumps(event)


def check_openai_server(event: dict[str, Any]) -> str:
    """A server event a fake OpenAI sends, as its frame. Raises Violation."""
    text = json.dumps(event)
    try:
        model = OPENAI_SERVER.validate_json(text)
    except ValueError as exc:
        raise Violation(f"not an OpenAI realtime server event: {exc}") from None
    _strict(model, text)
    return text


def check_gemini_client(text: str) -> dict[str, Any]:
    """A message the edge sent to Gemini Live, with JSON (camelCase) names. Raises Violation.

    `setup.realtimeInputConfig` is checked with `types.RealtimeInputConfig`: `LiveClientSetup` does not
    declare it, yet the SDK's own `live.connect` sends it there (from `LiveConnectConfig`).
    """
    message = json.loads(text)
    detection: BaseModel | None = None
    setup = message.get("setup") if isinstance(message, dict) else None
    if isinstance(setup, dict) and "realtimeInputConfig" in setup:
        part = json.dumps(setup.pop("realtimeInputConfig"))
        try:
            detection = genai.RealtimeInputConfig.model_validate_json(part)
        except ValueError as exc:
            raise Violation(f"not a Gemini RealtimeInputConfig: {exc}") from None
        _strict(detection, part)
        text = json.dumps(message)
    try:
        model = genai.LiveClientMessage.model_validate_json(text)
    except ValueError as exc:
        raise Violation(f"not a Gemini LiveClientMessage: {exc}") from None
    _strict(model, text)
    checked: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if detection is not None:
        checked["setup"]["realtimeInputConfig"] = detection.model_dump(
            mode="json", exclude_unset=True, by_alias=True
        )
    return checked


def check_gemini_server(message: dict[str, Any]) -> str:
    """A message a fake Gemini sends, as its frame. Raises Violation."""
    text = json.dumps(message)
    try:
        model = genai.LiveServerMessage.model_validate_json(text)
    except ValueError as exc:
        raise Violation(f"not a Gemini LiveServerMessage: {exc}") from None
    _strict(model, text)
    return text
