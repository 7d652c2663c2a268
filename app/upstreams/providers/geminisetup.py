"""Gemini Live's `setup` message: the effective config as Gemini's session configuration, no I/O."""

from __future__ import annotations

from typing import Any

from app.session.binding import effective_defaults
from app.session.models import ModelInfo


def setup(config: dict[str, Any], model: ModelInfo, *, handle: str | None = None) -> dict[str, Any]:
    """The `setup` message: the effective config as Gemini's session configuration.

    It always asks for resumption handles and a sliding context window (without compression an
    audio session ends after about 15 minutes); `handle` resumes an earlier connection's session.
    """
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
    body["sessionResumption"] = {"handle": handle} if handle else {}
    body["contextWindowCompression"] = {"slidingWindow": {}}
    return {"setup": body}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    theirs: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        theirs["description"] = tool["description"]
    if tool.get("parameters"):
        theirs["parametersJsonSchema"] = tool["parameters"]
    return theirs
