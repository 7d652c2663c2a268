"""The local model's turns: what the user gave since the last response, and the reply to it.

The reply is a stream of words made from strings the turn already holds: a megabyte of input
never becomes a megabyte-sized reply string, let alone a list of a million delta events.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.session.upstream import SessionInfo
from app.upstreams.audio import tone

CONFIG_COMMAND = "/config"
REPLY_AUDIO_MS = 600  # the audio of a reply
AUDIO_CHUNK_MS = 100  # one audio delta


@dataclass
class Turn:
    """What the user has given since the last response."""

    texts: list[str] = field(default_factory=list)
    audio_ms: float = 0.0
    images: int = 0
    tool_results: list[tuple[str, str]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.texts or self.audio_ms or self.images or self.tool_results)

    def asks_for_config(self) -> bool:
        return any(text.strip() == CONFIG_COMMAND for text in self.texts)


def _sentences(turn: Turn, config: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """The reply's sentences, each as strings the turn already holds."""
    for name, result in turn.tool_results:
        yield ("The tool ", name, " returned ", result, ".")
    for text in turn.texts:
        if text.strip() == CONFIG_COMMAND:
            yield (json.dumps(config, sort_keys=True, separators=(",", ":")),)
        else:
            yield ("You said: ", text)
    if turn.audio_ms:
        yield (f"I heard {turn.audio_ms / 1000:.1f} seconds of audio.",)
    if turn.images:
        yield (f"I see {turn.images} image{'s' if turn.images > 1 else ''}.",)


def _parts(turn: Turn, config: dict[str, Any]) -> Iterator[str]:
    """The sentences joined by spaces, as a stream of strings."""
    first = True
    for sentence in _sentences(turn, config):
        if not first:
            yield " "
        first = False
        yield from sentence
    if first:
        yield "Hello from the local model."


#: What `/config` shows instead of a hidden field's content.
HIDDEN = "[bound: not shown]"


def shown_config(config: dict[str, Any], hidden: frozenset[str]) -> dict[str, Any]:
    """`config` as `/config` shows it: the content of each `hidden` field replaced by `HIDDEN`."""
    return {name: HIDDEN if name in hidden else value for name, value in config.items()}


def reply_words(turn: Turn, config: dict[str, Any]) -> Iterator[str]:
    """The reply to `turn` as text deltas of one word each, the space after a word kept with it.

    `config` is what `/config` answers with (the session's effective config).
    """
    pending = ""  # the start of a word cut by the end of a part: at most one word
    for part in _parts(turn, config):
        start = 0
        while (space := part.find(" ", start)) >= 0:
            yield pending + part[start : space + 1]
            pending, start = "", space + 1
        pending += part[start:]
    if pending:
        yield pending


def tool_named(tools: Iterable[dict[str, Any]], texts: Sequence[str]) -> str | None:
    """The first bound tool whose name one of the turn's texts mentions (the local model's tool call)."""
    for text in texts:
        for tool in tools:
            if tool["name"] in text:
                return str(tool["name"])
    return None


def reply_deltas(turn: Turn, modalities: Sequence[str], session: SessionInfo) -> Iterator[dict[str, Any]]:
    """The deltas of the reply to `turn`, made one at a time as they go out."""
    # `/config` is a diagnostic: answered in text even when the session has no text modality.
    if "text" in modalities or turn.asks_for_config():
        for word in reply_words(turn, shown_config(session.config, session.hidden)):
            yield {"type": "text.delta", "delta": word}
    if "audio" in modalities:
        chunk = base64.b64encode(tone(session.model.output_sample_rate, AUDIO_CHUNK_MS)).decode("ascii")
        for _ in range(REPLY_AUDIO_MS // AUDIO_CHUNK_MS):
            yield {"type": "audio.delta", "audio": chunk}
