"""What every provider translator shares: its interface, redaction, provider errors as events."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

PROVIDERS = ("openai", "xai", "gemini")
# Provider key shapes, redacted from provider messages the browser sees (besides the configured keys).
# Fragments too: a provider refusing a key quotes it masked (`sk-****7890`), and even its last
# characters narrow a guess, so any token after a key prefix goes, masked or short.
_KEY_SHAPES = re.compile(r"\b(?:sk-|xai-|AIza)(?:[A-Za-z0-9_\-*.]*[A-Za-z0-9_*])?")


class Translator(Protocol):
    """One session's translation between this protocol and a provider's; no I/O."""

    provider: str
    #: The provider announced the end of this connection (Gemini `goAway`): resume on a new one.
    going_away: bool
    #: The newest handle a new connection can resume the session with (None: none, or no resumption).
    handle: str | None

    @property
    def manual_turns(self) -> bool:
        """Whether the client commits turns (no voice activity detection at the provider)."""
        ...

    def expects_answer(self, event: dict[str, Any]) -> bool:
        """Whether the provider must answer after this client event (the silence timeout starts)."""
        ...

    def resumption_opening(self) -> list[dict[str, Any]] | None:
        """The opening of a new connection resuming this session; None when it cannot be resumed."""
        ...

    def resumed(self) -> list[dict[str, Any]]:
        """A new connection took over; the server events that ends (an answer cut short)."""
        ...

    def opening(self) -> list[dict[str, Any]]:
        """The messages that configure the provider's session with the effective config."""
        ...

    def acknowledges(self, message: dict[str, Any]) -> bool:
        """Whether `message` acknowledges the configuration sent by `opening`."""
        ...

    def to_provider(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """One checked client event as the provider's messages (possibly none).

        Raises:
            UnsupportedEventError: the provider has no counterpart for this event.
            SessionUpdateUnsupportedError: a `session.update` to a provider that cannot take one.
        """
        ...

    def from_provider(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        """One provider message as server events; None when this protocol has no counterpart."""
        ...

    def kind(self, message: dict[str, Any]) -> str:
        """The message's type, for the dropped-events metric (a bounded set of names)."""
        ...


def effective(changes: dict[str, Any]) -> dict[str, Any]:
    """The config a `session.update` event carries: every field, `null` for removed ones."""
    return {name: value for name, value in changes.items() if value is not None}


def decode_message(frame: str | bytes, string_kinds: Mapping[str, str]) -> Any:
    """A provider's frame decoded (None if it is not JSON).

    `string_kinds` maps message types whose translation reads one member, a string, to that member
    (the deltas, the bulk of a session): those are read by orjson, at a quarter of the cost. orjson
    reads integers out of 64 bits as floats and refuses what `json` takes (`NaN`), so any other
    message, or such a message whose member is not a string, is read by `json`.
    """
    if string_kinds:
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict):
            member = string_kinds.get(str(message.get("type")))
            if member is not None and type(message.get(member)) is str:
                return message
    try:
        return json.loads(frame)
    except (ValueError, RecursionError):  # nested past the interpreter's stack: not for us to read
        return None


def redact(message: str, secrets: tuple[str, ...] = ()) -> str:
    """`message` with the given secrets and anything shaped like a provider key replaced by `***`."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return _KEY_SHAPES.sub("***", message)


def upstream_error(provider: str, message: str) -> dict[str, Any]:
    """A provider's error as a non-fatal `error` event (docs/protocol.md)."""
    return {
        "type": "error",
        "error": {"code": "upstream_error", "message": f"{provider}: {redact(message)[:1000]}"},
    }


def known(kind: str, names: frozenset[str]) -> str:
    """`kind` when it is one of `names`, else `other`: metric labels stay a bounded set."""
    return kind if kind in names else "other"
