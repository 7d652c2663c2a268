"""OpenAI Realtime (GA) and xAI's OpenAI-compatible realtime API: this protocol <-> theirs, no I/O.

Messages are plain dicts shaped as `openai.types.realtime` client events (checked against those
types, extra members refused, in tests/test_providers.py). OpenAI answers in audio or in text, not
both: `modalities: ["audio", "text"]` is audio output whose transcript becomes `text.delta`.

xAI speaks the same events with its own session shape (`openaisession.py`): `voice` and
`turn_detection` at the top of `session` (null: manual turns), the audio formats under `audio`, and
nothing xAI does not document (docs/decisions.md, "xAI's session shape"). It reports partial
input transcripts as `...input_audio_transcription.completed` with `status: "in_progress"`: those
become nothing.
"""

from __future__ import annotations

from typing import Any

from app.session.models import ModelInfo
from app.session.usage import Usage
from app.sessionerrors import UnsupportedEventError
from app.upstreams.providers.base import effective, known, upstream_error
from app.upstreams.providers.openaisession import session_config, turn_detection, xai_session_config

# Server event types with no counterpart in this protocol: dropped, and counted by name.
DROPPED = frozenset(
    {
        "session.created",
        "conversation.created",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.cleared",
        "input_audio_buffer.committed",
        "input_audio_buffer.dtmf_event_received",
        "input_audio_buffer.timeout_triggered",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "rate_limits.updated",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_audio_transcript.delta",
        "response.output_text.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.function_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "mcp_list_tools.failed",
    }
)
KINDS = DROPPED | {"session.updated", "error"}
STATUSES = frozenset({"completed", "cancelled", "failed", "incomplete"})


def _user_message(*content: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": list(content)},
    }


class OpenAITranslator:
    """One session on OpenAI Realtime (GA events) or on xAI (the same events, its own URL and key)."""

    #: Message types whose translation reads one member, a string (the deltas): read by orjson.
    string_kinds = {
        "response.output_audio.delta": "delta",
        "response.output_text.delta": "delta",
        "response.output_audio_transcript.delta": "delta",
    }

    def __init__(
        self,
        config: dict[str, Any],
        model: ModelInfo,
        *,
        provider: str = "openai",
        usage: Usage | None = None,
    ) -> None:
        self.provider = provider
        self._model = model
        self._config = config
        self._usage = usage if usage is not None else Usage(provider=provider)
        self._transcript_as_text = self._wants_transcript(config)
        self._session = xai_session_config if provider == "xai" else session_config

    going_away = False  # OpenAI and xAI announce no end of a connection: nothing to resume
    handle: str | None = None

    def resumption_opening(self) -> list[dict[str, Any]] | None:
        return None

    def resumed(self) -> list[dict[str, Any]]:
        return []

    @property
    def manual_turns(self) -> bool:
        """Whether the client commits turns (no server VAD): only `response.create` asks for an answer."""
        return turn_detection(self._config) is None

    def expects_answer(self, event: dict[str, Any]) -> bool:
        """Whether the provider must answer after `event` (the silence timeout starts)."""
        return bool(event["type"] == "response.create")

    def _wants_transcript(self, config: dict[str, Any]) -> bool:
        modalities = config.get("modalities") or ("audio", "text")
        self._audio_out = "audio" in modalities or self.provider != "xai"
        if self.provider == "xai" and "audio" not in modalities:
            return True  # xAI always speaks: its transcript is the text output
        return "audio" in modalities and ("text" in modalities or bool(config.get("output_transcription")))

    def opening(self) -> list[dict[str, Any]]:
        return [{"type": "session.update", "session": self._session(self._config, self._model, update=False)}]

    def acknowledges(self, message: dict[str, Any]) -> bool:
        return message.get("type") == "session.updated"

    def kind(self, message: dict[str, Any]) -> str:
        return known(str(message.get("type")), KINDS)

    def to_provider(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind == "audio.append":
            return [{"type": "input_audio_buffer.append", "audio": event["audio"]}]
        if kind == "audio.commit":
            return [{"type": "input_audio_buffer.commit"}]
        if kind == "audio.clear":
            return [{"type": "input_audio_buffer.clear"}]
        if kind == "text.input":
            return [_user_message({"type": "input_text", "text": event["text"]})]
        if kind == "response.create":
            return [{"type": "response.create"}]
        if kind == "response.cancel":
            return [{"type": "response.cancel"}]
        if kind == "tool.result":
            item = {"type": "function_call_output", "call_id": event["tool_call_id"]}
            return [{"type": "conversation.item.create", "item": {**item, "output": event["tool_result"]}}]
        if kind == "image.input":
            image: dict[str, Any] = {"type": "input_image", "image_url": event["image_url"]}
            if event.get("image_detail"):
                image["detail"] = event["image_detail"]
            return [_user_message(image)]
        if kind == "session.update":
            config = effective(event["config"])
            voice = config.get("voice") != self._config.get("voice")
            self._config = config
            self._transcript_as_text = self._wants_transcript(config)
            session = self._session(config, self._model, update=True, voice=voice)
            return [{"type": "session.update", "session": session}]
        raise UnsupportedEventError(f"{self.provider} has no counterpart for {kind}")

    def from_provider(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        kind = message.get("type")
        if kind == "response.output_audio.delta":
            return [{"type": "audio.delta", "audio": message["delta"]}] if self._audio_out else []
        if kind == "response.output_text.delta" or (
            kind == "response.output_audio_transcript.delta" and self._transcript_as_text
        ):
            return [{"type": "text.delta", "delta": message["delta"]}]
        if kind == "response.created":
            return [{"type": "response.started"}]
        if kind == "response.done":
            return self._done(message.get("response") or {})
        if kind == "input_audio_buffer.speech_started":
            return [{"type": "speech.started"}]
        if kind == "input_audio_buffer.speech_stopped":
            return [{"type": "speech.stopped"}]
        if kind == "conversation.item.input_audio_transcription.completed":
            if message.get("status") == "in_progress":
                return []  # xAI's partial transcript: the final one follows with the whole text
            return [{"type": "transcript.committed", "transcript": message["transcript"]}]
        if kind == "conversation.item.input_audio_transcription.failed":
            error = message.get("error") or {}
            said = error.get("message") or error.get("code") or "no reason given"
            return [upstream_error(self.provider, f"input audio transcription failed: {said}")]
        if kind == "response.function_call_arguments.done":
            return [
                {
                    "type": "tool.call",
                    "tool_call_id": message["call_id"],
                    "tool_name": message["name"],
                    "tool_arguments": message["arguments"],
                }
            ]
        if kind == "error":
            error = message.get("error") or {}
            return [upstream_error(self.provider, str(error.get("message") or "an error without a message"))]
        if kind == "session.updated":
            return []  # an update's acknowledgement: the session already said `session.updated`
        return None

    def _done(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        """`response.done` as `response.completed` with the provider's status, reason and usage;
        a failed response is announced by an `error` first (a failure is never shown as success)."""
        status = response.get("status") or "completed"
        if status not in STATUSES:
            status = "failed" if status != "in_progress" else "completed"
        details = response.get("status_details") or {}
        completed: dict[str, Any] = {"type": "response.completed", "status": status}
        events = [completed]
        if status == "failed":
            error = details.get("error") or {}
            code = error.get("code") or error.get("type") or "unknown"
            kind = error.get("type")
            said = f"the response failed: {code}" + (f" ({kind})" if kind and kind != code else "")
            if error.get("message"):
                said += f": {error['message']}"
            events.insert(0, upstream_error(self.provider, said))
        elif status == "incomplete" and details.get("reason"):
            completed["reason"] = str(details["reason"])
        usage = response.get("usage")
        if isinstance(usage, dict):
            tokens = {
                name: usage[name]
                for name in ("input_tokens", "output_tokens")
                if type(usage.get(name)) is int
            }
            if tokens:
                completed["usage"] = tokens
                self._usage.add_tokens(tokens.get("input_tokens"), tokens.get("output_tokens"))
        return events
