"""Gemini Live (`BidiGenerateContent`): this protocol <-> Google's Live API messages, no I/O.

Messages are plain dicts in the Live API's JSON form (camelCase), shaped as
`google.genai.types.LiveClientMessage` (checked against that type in tests/test_providers.py).
Gemini takes its whole configuration once, in `setup`; a `session.update` is refused before it
gets here (`session_update_unsupported`, docs/protocol.md).
"""

from __future__ import annotations

import json
from typing import Any

from app.binding import effective_defaults
from app.exceptions import SessionUpdateUnsupportedError, UnsupportedEventError
from app.models import ModelInfo
from app.providers.base import known

TRANSCRIPT_MAX_CHARS = 65_536  # an input transcript is flushed whole; past this it is cut
PENDING_TOOL_CALLS = 64  # tool call ids kept to name their results; the oldest go first
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


def setup(config: dict[str, Any], model: ModelInfo) -> dict[str, Any]:
    """The `setup` message: the effective config as Gemini's session configuration."""
    full = effective_defaults(config, model)
    audio_out = "audio" in full["modalities"]
    generation: dict[str, Any] = {"responseModalities": ["AUDIO" if audio_out else "TEXT"]}
    if audio_out:
        generation["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": full["voice"]}}}
    if full.get("temperature") is not None:
        generation["temperature"] = full["temperature"]
    if full.get("translation_target_language"):
        generation["translationConfig"] = {"targetLanguageCode": full["translation_target_language"]}
    body: dict[str, Any] = {"model": f"models/{model.provider_name}", "generationConfig": generation}
    if full.get("instructions"):
        body["systemInstruction"] = {"parts": [{"text": full["instructions"]}]}
    if full.get("tools"):
        body["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in full["tools"]]}]
    turn = full["turn_detection"]
    if turn.get("type") == "none":
        body["realtimeInputConfig"] = {"automaticActivityDetection": {"disabled": True}}
    else:
        # `threshold` has no counterpart (Gemini takes coarse sensitivities instead).
        detection = {
            camel: turn[name]
            for name, camel in (
                ("prefix_padding_ms", "prefixPaddingMs"),
                ("silence_duration_ms", "silenceDurationMs"),
            )
            if turn.get(name) is not None
        }
        if detection:
            body["realtimeInputConfig"] = {"automaticActivityDetection": detection}
    if full.get("input_transcription"):
        body["inputAudioTranscription"] = {}
    if audio_out and ("text" in full["modalities"] or full.get("output_transcription")):
        body["outputAudioTranscription"] = {}
    return {"setup": body}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    theirs: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        theirs["description"] = tool["description"]
    if tool.get("parameters"):
        theirs["parametersJsonSchema"] = tool["parameters"]
    return theirs


def _image(url: str) -> dict[str, Any]:
    """A `data:` URL as an inline blob; Gemini cannot fetch other URLs for a live session."""
    head, comma, data = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and comma):
        raise UnsupportedEventError("gemini takes image.input only as a base64 data: URL")
    return {"inlineData": {"mimeType": head[len("data:") : -len(";base64")], "data": data}}


class GeminiTranslator:
    """One session on Gemini Live."""

    provider = "gemini"

    def __init__(self, config: dict[str, Any], model: ModelInfo) -> None:
        self._config = effective_defaults(config, model)
        self._model = model
        self._manual = self._config["turn_detection"].get("type") == "none"
        self._mime = f"audio/pcm;rate={model.input_sample_rate}"
        self._activity = False  # manual turns: an activityStart was sent and not yet ended
        self._responding = False
        self._after_tool = False  # Gemini goes on by itself after a tool response
        self._transcript: list[str] = []
        self._transcript_chars = 0
        self._tool_names: dict[str, str] = {}

    def opening(self) -> list[dict[str, Any]]:
        return [setup(self._config, self._model)]

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
            return [self._turn({"text": event["text"]})]
        if kind == "image.input":
            return [self._turn(_image(event["image_url"]))]
        if kind == "response.create":
            if self._after_tool:
                self._after_tool = False
                return []
            return [{"clientContent": {"turnComplete": True}}]
        if kind == "tool.result":
            response: dict[str, Any] = {
                "id": event["tool_call_id"],
                "response": {"output": event["tool_result"]},
            }
            name = self._tool_names.pop(event["tool_call_id"], None)
            if name is not None:
                response["name"] = name
            self._after_tool = True
            return [{"toolResponse": {"functionResponses": [response]}}]
        if kind == "session.update":
            raise SessionUpdateUnsupportedError(
                f"{self._model.id} ignores session.update: set the config in session.start"
            )
        raise UnsupportedEventError(f"gemini has no counterpart for {kind}")

    @staticmethod
    def _turn(part: dict[str, Any]) -> dict[str, Any]:
        return {"clientContent": {"turns": [{"role": "user", "parts": [part]}], "turnComplete": False}}

    # Theirs -> ours ---------------------------------------------------------------------

    def from_provider(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        events: list[dict[str, Any]] = []
        content = message.get("serverContent")
        if isinstance(content, dict):
            self._content(content, events)
        calls = (message.get("toolCall") or {}).get("functionCalls")
        if calls:
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
        activity = (message.get("voiceActivity") or {}).get("voiceActivityType")
        if activity == "ACTIVITY_START":
            events.append({"type": "speech.started"})
        elif activity == "ACTIVITY_END":
            events.append({"type": "speech.stopped"})
        if "setupComplete" in message:
            return []
        return events or None

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
