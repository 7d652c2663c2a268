"""Gemini Live (`BidiGenerateContent`): this protocol <-> Google's Live API messages, no I/O.

Messages are plain dicts in the Live API's JSON form (camelCase), shaped as
`google.genai.types.LiveClientMessage` (checked against that type in tests/test_providers.py).
Gemini takes its whole configuration once, in `setup`; a `session.update` is refused before it
gets here (`session_update_unsupported`, docs/protocol.md).

Google ends a Live connection after about 10 minutes (`goAway` announces it): the setup
(`geminisetup.py`) asks for session resumption and context compression, the translator keeps the
newest resumable handle, and the connection (`app.upstreams.providers.resumption`) opens a new one
with `resumption_opening()`. Text goes as `realtimeInput.text`, images as `realtimeInput.video`:
mid-session `clientContent` closes Gemini 3.1 sessions (docs/decisions.md, "Gemini: realtime input,
not clientContent").
"""

from __future__ import annotations

import json
from typing import Any

from app.exceptions import UpstreamError
from app.session.binding import effective_defaults
from app.session.models import ModelInfo
from app.session.usage import Usage
from app.sessionerrors import SessionUpdateUnsupportedError, UnsupportedEventError
from app.upstreams.providers.base import known
from app.upstreams.providers.geminisetup import setup

TRANSCRIPT_MAX_CHARS = 65_536  # an input transcript is flushed whole; past this it is cut
PENDING_TOOL_CALLS = 64  # tool call ids kept to name their results; the oldest go first
CANCELLED_TOOL_CALLS = 256  # cancelled ids kept so their late results are dropped; the oldest go first
#: The most function calls one `toolCall` may hold. Each becomes an event the session holds: a 1 MB
#: frame of tiny calls would otherwise expand into tens of thousands of events past the memory budget.
MAX_TOOL_CALLS = 128
HANDLE_MAX_CHARS = 4096  # a resumption handle longer than this is not kept (it is an opaque id)
KINDS = frozenset(
    {
        "setupComplete",
        "serverContent",
        "toolCall",
        "toolCallCancellation",
        "usageMetadata",
        "goAway",
        "sessionResumptionUpdate",
        "voiceActivityDetectionSignal",
        "voiceActivity",
    }
)


def _kind(message: dict[str, Any]) -> str:
    return next(iter(message), "empty")


def _image(url: str) -> dict[str, Any]:
    """A `data:` URL as an inline blob; Gemini cannot fetch other URLs for a live session."""
    head, comma, data = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and comma):
        raise UnsupportedEventError("gemini takes image.input only as a base64 data: URL")
    return {"inlineData": {"mimeType": head[len("data:") : -len(";base64")], "data": data}}


class GeminiTranslator:
    """One session on Gemini Live."""

    provider = "gemini"

    def __init__(self, config: dict[str, Any], model: ModelInfo, *, usage: Usage | None = None) -> None:
        self._config = effective_defaults(config, model)
        self._usage = usage if usage is not None else Usage(provider="gemini")
        self.handle: str | None = None  # the newest resumable session handle
        self.going_away = False  # a goAway came: resume on a new connection now
        self._cancelled: dict[str, None] = {}
        self._model = model
        self._manual: bool = self._config["turn_detection"].get("type") == "none"
        self._mime = f"audio/pcm;rate={model.input_sample_rate}"
        self._activity = False  # manual turns: an activityStart was sent and not yet ended
        self._responding = False
        self._transcript: list[str] = []
        self._transcript_chars = 0
        self._tool_names: dict[str, str] = {}

    @property
    def manual_turns(self) -> bool:
        return self._manual

    def opening(self) -> list[dict[str, Any]]:
        return [setup(self._config, self._model)]

    def resumption_opening(self) -> list[dict[str, Any]] | None:
        """The setup of a new connection resuming this session; None without a resumable handle."""
        if self.handle is None:
            return None
        return [setup(self._config, self._model, handle=self.handle)]

    def resumed(self) -> list[dict[str, Any]]:
        """A new connection took over: per-connection state starts again; the events that ends."""
        self.going_away = False
        self._activity = False  # an activityStart sent on the old connection is gone with it
        events: list[dict[str, Any]] = []
        if self._responding:  # the answer in flight went with the old connection
            self._responding = False
            events.append({"type": "response.completed", "status": "incomplete", "reason": "reconnected"})
        return events

    def expects_answer(self, event: dict[str, Any]) -> bool:
        """Whether Gemini answers after `event` by itself (the silence timeout starts)."""
        kind = str(event["type"])
        if kind == "audio.commit":
            return self._manual
        return kind in ("text.input", "tool.result")

    def acknowledges(self, message: dict[str, Any]) -> bool:
        return "setupComplete" in message

    def kind(self, message: dict[str, Any]) -> str:
        return known(_kind(message), KINDS)

    # Ours -> theirs ---------------------------------------------------------------------

    def to_provider(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind == "audio.append":
            audio = {"realtimeInput": {"audio": {"data": event["audio"], "mimeType": self._mime}}}
            if self._manual and not self._activity:
                self._activity = True
                return [{"realtimeInput": {"activityStart": {}}}, audio]
            return [audio]
        if kind == "audio.commit":
            if not self._manual:
                return [{"realtimeInput": {"audioStreamEnd": True}}]
            if not self._activity:
                return []
            self._activity = False
            return [{"realtimeInput": {"activityEnd": {}}}]
        if kind == "text.input":
            return [{"realtimeInput": {"text": event["text"]}}]  # Gemini answers it by itself
        if kind == "image.input":
            return [{"realtimeInput": {"video": _image(event["image_url"])["inlineData"]}}]
        if kind == "response.create":
            return []  # Gemini answers text, a finished turn and a tool's result by itself
        if kind == "tool.result":
            if event["tool_call_id"] in self._cancelled:
                return []  # Gemini cancelled that call: its result is dropped without an error
            response: dict[str, Any] = {
                "id": event["tool_call_id"],
                "response": {"output": event["tool_result"]},
            }
            name = self._tool_names.pop(event["tool_call_id"], None)
            if name is not None:
                response["name"] = name
            return [{"toolResponse": {"functionResponses": [response]}}]
        if kind == "session.update":
            raise SessionUpdateUnsupportedError(
                f"{self._model.id} ignores session.update: set the config in session.start"
            )
        raise UnsupportedEventError(f"gemini has no counterpart for {kind}")

    # Theirs -> ours ---------------------------------------------------------------------

    def from_provider(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        events: list[dict[str, Any]] = []
        content = message.get("serverContent")
        if isinstance(content, dict):
            self._content(content, events)
        calls = (message.get("toolCall") or {}).get("functionCalls")
        if calls:
            if len(calls) > MAX_TOOL_CALLS:
                raise UpstreamError(
                    f"gemini sent a toolCall of {len(calls)} function calls (at most {MAX_TOOL_CALLS})"
                )
            self._start(events)
            for call in calls:
                call_id = str(call.get("id") or "")
                self._remember(call_id, str(call.get("name") or ""))
                events.append(
                    {
                        "type": "tool.call",
                        "tool_call_id": call_id,
                        "tool_name": call.get("name"),
                        "tool_arguments": json.dumps(call.get("args") or {}, separators=(",", ":")),
                    }
                )
            self._end(events)  # as OpenAI: the call ends its response; the tool result starts the next
        cancelled = (message.get("toolCallCancellation") or {}).get("ids")
        if cancelled:
            ids = [str(call_id) for call_id in cancelled[:MAX_TOOL_CALLS]]
            for call_id in ids:
                self._tool_names.pop(call_id, None)
                if len(self._cancelled) >= CANCELLED_TOOL_CALLS:
                    self._cancelled.pop(next(iter(self._cancelled)))
                self._cancelled[call_id] = None
            events.append({"type": "tool.cancelled", "tool_call_ids": ids})
        update = message.get("sessionResumptionUpdate")
        if isinstance(update, dict):
            handle = update.get("newHandle")
            if update.get("resumable") and isinstance(handle, str) and 0 < len(handle) <= HANDLE_MAX_CHARS:
                self.handle = handle
        if "goAway" in message:
            self.going_away = True
        usage = message.get("usageMetadata")
        if isinstance(usage, dict):
            self._count(usage, events)
        activity = (message.get("voiceActivity") or {}).get("voiceActivityType")
        if activity == "ACTIVITY_START":
            events.append({"type": "speech.started"})
        elif activity == "ACTIVITY_END":
            events.append({"type": "speech.stopped"})
        if "setupComplete" in message:
            return []
        if not events and any(
            name in message for name in ("sessionResumptionUpdate", "goAway", "usageMetadata")
        ):
            return []  # taken in: the session's handle, its resumption, its usage
        return events or None

    def _count(self, usage: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """Add a usage report to the session's; a `response.completed` in the same message carries it."""
        prompt, response = usage.get("promptTokenCount"), usage.get("responseTokenCount")
        self._usage.add_tokens(prompt, response)
        tokens = {
            name: value
            for name, value in (("input_tokens", prompt), ("output_tokens", response))
            if type(value) is int
        }
        completed = next((event for event in events if event["type"] == "response.completed"), None)
        if completed is not None and tokens:
            completed["usage"] = tokens

    def _content(self, content: dict[str, Any], events: list[dict[str, Any]]) -> None:
        heard = (content.get("inputTranscription") or {}).get("text")
        if heard:
            self._hear(str(heard))
        if (content.get("inputTranscription") or {}).get("finished"):
            self._flush(events)
        for part in (content.get("modelTurn") or {}).get("parts") or ():
            blob = part.get("inlineData") or {}
            if blob.get("data") and str(blob.get("mimeType", "")).startswith("audio/"):
                self._start(events)
                events.append({"type": "audio.delta", "audio": blob["data"]})
            elif part.get("text") and not part.get("thought"):
                self._start(events)
                events.append({"type": "text.delta", "delta": part["text"]})
        said = (content.get("outputTranscription") or {}).get("text")
        if said:
            self._start(events)
            events.append({"type": "text.delta", "delta": said})
        if content.get("interrupted") or content.get("turnComplete"):
            self._flush(events)
            self._end(events, "cancelled" if content.get("interrupted") else "completed")

    def _start(self, events: list[dict[str, Any]]) -> None:
        if not self._responding:
            self._flush(events)  # what was heard comes before the answer to it
            self._responding = True
            events.append({"type": "response.started"})

    def _end(self, events: list[dict[str, Any]], status: str = "completed") -> None:
        if self._responding:
            self._responding = False
            events.append({"type": "response.completed", "status": status})

    def _hear(self, text: str) -> None:
        room = TRANSCRIPT_MAX_CHARS - self._transcript_chars
        if room > 0:
            self._transcript.append(text[:room])
            self._transcript_chars += min(len(text), room)

    def _flush(self, events: list[dict[str, Any]]) -> None:
        if self._transcript:
            events.append({"type": "transcript.committed", "transcript": "".join(self._transcript).strip()})
            self._transcript, self._transcript_chars = [], 0

    def _remember(self, call_id: str, name: str) -> None:
        if len(self._tool_names) >= PENDING_TOOL_CALLS:
            self._tool_names.pop(next(iter(self._tool_names)))
        self._tool_names[call_id] = name
