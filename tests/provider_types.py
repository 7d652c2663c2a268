"""Strict checks of provider messages against the providers' official SDK types.

The SDK models accept members they do not declare (OpenAI's keep them as extras); the real APIs
refuse them. `check_*` parse a frame with the SDK type, then refuse any undeclared member anywhere
and any value the model does not give back as sent.
"""

from __future__ import annotations

import json
from typing import Any

from google.genai import types as genai
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

OPENAI_CLIENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)
OPENAI_SERVER: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


class Violation(AssertionError):
    """A message that the provider's SDK types do not accept as it is."""


def _extras(value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{name}" for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += _extras(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _extras(item, f"{path}.{key}")
    return found


def _strict(model: Any, text: str, *, by_alias: bool) -> dict[str, Any]:
    extras = _extras(model, "$")
    if extras:
        raise Violation(f"members the SDK type does not declare: {', '.join(extras)} in {text[:300]}")
    sent = json.loads(text)
    if not isinstance(model, BaseModel):
        raise Violation(f"not a message: {text[:300]}")
    kept = model.model_dump(mode="json", exclude_unset=True, by_alias=by_alias)
    if kept != sent:
        raise Violation(f"the SDK type does not give the message back as sent: {kept!r} != {sent!r}")
    return dict(sent)


def check_openai_client(text: str) -> dict[str, Any]:
    """A client event the edge sent to OpenAI or xAI. Raises Violation."""
    try:
        model = OPENAI_CLIENT.validate_json(text)
    except ValueError as exc:
        raise Violation(f"not an OpenAI realtime client event: {exc}") from None
    return _strict(model, text, by_alias=True)


def check_openai_server(event: dict[str, Any]) -> str:
    """A server event a fake OpenAI sends, as its frame. Raises Violation."""
    text = json.dumps(event)
    try:
        model = OPENAI_SERVER.validate_json(text)
    except ValueError as exc:
        raise Violation(f"not an OpenAI realtime server event: {exc}") from None
    _strict(model, text, by_alias=True)
    return text


def check_gemini_client(text: str) -> dict[str, Any]:
    """A message the edge sent to Gemini Live. Raises Violation.

    `setup.realtimeInputConfig` is checked with `types.RealtimeInputConfig`: `LiveClientSetup` does not
    declare it, yet the SDK's own `live.connect` sends it there (from `LiveConnectConfig`).
    """
    original = json.loads(text)
    message = json.loads(text)
    setup = message.get("setup") if isinstance(message, dict) else None
    if isinstance(setup, dict) and "realtimeInputConfig" in setup:
        detection = json.dumps(setup.pop("realtimeInputConfig"))
        try:
            part = genai.RealtimeInputConfig.model_validate_json(detection)
        except ValueError as exc:
            raise Violation(f"not a Gemini RealtimeInputConfig: {exc}") from None
        _strict(part, detection, by_alias=True)
        text = json.dumps(message)
    try:
        model = genai.LiveClientMessage.model_validate_json(text)
    except ValueError as exc:
        raise Violation(f"not a Gemini LiveClientMessage: {exc}") from None
    _strict(model, text, by_alias=True)
    return dict(original)


def check_gemini_server(message: dict[str, Any]) -> str:
    """A message a fake Gemini sends, as its frame. Raises Violation."""
    text = json.dumps(message)
    try:
        model = genai.LiveServerMessage.model_validate_json(text)
    except ValueError as exc:
        raise Violation(f"not a Gemini LiveServerMessage: {exc}") from None
    _strict(model, text, by_alias=True)
    return text
