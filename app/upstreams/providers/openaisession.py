"""OpenAI's and xAI's `session` (of a `session.update`): the effective config in each one's shape, no I/O."""

from __future__ import annotations

from typing import Any

from app.session.binding import effective_defaults
from app.session.models import ModelInfo

DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"


def turn_detection(config: dict[str, Any]) -> dict[str, Any] | None:
    """Our `turn_detection` as OpenAI's (`none` is null: the client commits and asks for responses)."""
    ours = config.get("turn_detection") or {"type": "server_vad"}
    kind = ours.get("type") or "server_vad"
    if kind == "none":
        return None
    if kind == "semantic_vad":
        return {"type": "semantic_vad"}  # it takes no threshold or durations
    theirs: dict[str, Any] = {"type": "server_vad"}
    for name in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
        if ours.get(name) is not None:
            theirs[name] = ours[name]
    return theirs


def function_tool(tool: dict[str, Any]) -> dict[str, Any]:
    theirs: dict[str, Any] = {"type": "function", "name": tool["name"]}
    if tool.get("description"):
        theirs["description"] = tool["description"]
    theirs["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    return theirs


def session_config(
    config: dict[str, Any], model: ModelInfo, *, update: bool, voice: bool = True
) -> dict[str, Any]:
    """The `session` of a `session.update`: the effective config, with defaults filled in.

    `update`: say explicitly what an absent field means (no instructions, no tools, no transcription),
    since OpenAI keeps what an update leaves out. `voice`: include the voice (OpenAI refuses a voice
    change once the session has produced audio, so an update carries it only when it changed).
    """
    full = effective_defaults(config, model)
    audio_out = "audio" in full["modalities"]
    audio_format = {"type": "audio/pcm", "rate": model.input_sample_rate}
    audio_input: dict[str, Any] = {"format": audio_format, "turn_detection": turn_detection(full)}
    if full.get("input_transcription"):
        audio_input["transcription"] = {
            "model": full.get("input_transcription_model") or DEFAULT_TRANSCRIPTION_MODEL
        }
    elif update:
        audio_input["transcription"] = None
    audio_output: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": model.output_sample_rate}}
    if voice:
        audio_output["voice"] = full["voice"]
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"] if audio_out else ["text"],
        "audio": {"input": audio_input, "output": audio_output},
    }
    if full.get("instructions") or update:
        session["instructions"] = full.get("instructions") or ""
    if full.get("tools") or update:
        session["tools"] = [function_tool(tool) for tool in full.get("tools") or ()]
    if model.reasoning_effort and full.get("reasoning_effort"):
        session["reasoning"] = {"effort": full["reasoning_effort"]}
    # `temperature`: the GA session has no such member, so it cannot be passed on.
    return session


def xai_session_config(
    config: dict[str, Any], model: ModelInfo, *, update: bool, voice: bool = True
) -> dict[str, Any]:
    """xAI's `session`: `voice` and `turn_detection` at its top, only the members xAI documents.

    xAI transcribes input by itself and has no output modality switch: text-only output is the
    translator dropping the audio (`OpenAITranslator.from_provider`).
    """
    full = effective_defaults(config, model)
    session: dict[str, Any] = {}
    if voice:
        session["voice"] = full["voice"]
    session["turn_detection"] = turn_detection(full)
    session["audio"] = {
        "input": {"format": {"type": "audio/pcm", "rate": model.input_sample_rate}},
        "output": {"format": {"type": "audio/pcm", "rate": model.output_sample_rate}},
    }
    if full.get("instructions") or update:
        session["instructions"] = full.get("instructions") or ""
    if full.get("tools") or update:
        session["tools"] = [function_tool(tool) for tool in full.get("tools") or ()]
    return session
