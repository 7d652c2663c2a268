"""The model registry (`app/models.json`, `GET /v3/models`) and what each model can do.

registry.get(model_id)       the model, or `unknown_model`
check_capabilities(cfg, reg) the model can do what the config asks (voice, modalities, ...)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from app.sessionerrors import (
    MissingModelError,
    UnknownModelError,
    UnsupportedModalitiesError,
    UnsupportedReasoningEffortError,
    UnsupportedTranslationError,
    UnsupportedTurnDetectionError,
    UnsupportedVoiceError,
)


@dataclass(frozen=True)
class ModelInfo:
    """One realtime model of the registry (`app/models.json`)."""

    id: str
    input_sample_rate: int
    output_sample_rate: int
    voices: tuple[str, ...]
    default_voice: str
    modalities: tuple[str, ...]
    turn_detection: tuple[str, ...]
    reasoning_effort: bool
    translation: bool
    session_update: bool
    fixed_after_start: tuple[str, ...]
    provider_model: str | None = None  # the provider's name for it, when not the id without its prefix

    @property
    def provider(self) -> str:
        """The provider part of the id: `openai` for `openai/gpt-realtime-2`."""
        return self.id.partition("/")[0]

    @property
    def provider_name(self) -> str:
        """What the provider calls the model: `provider_model`, else the id without its prefix."""
        return self.provider_model or self.id.partition("/")[2]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "realtime",
            "input_sample_rate": self.input_sample_rate,
            "output_sample_rate": self.output_sample_rate,
            "audio_format": "pcm16",
            "voices": list(self.voices),
            "default_voice": self.default_voice,
            "modalities": list(self.modalities),
            "turn_detection": list(self.turn_detection),
            "reasoning_effort": self.reasoning_effort,
            "translation": self.translation,
            "session_update": self.session_update,
            "fixed_after_start": list(self.fixed_after_start),
        }


class ModelRegistry:
    """The realtime models this service knows, loaded from a data file."""

    def __init__(self, models: list[ModelInfo], *, unserved: Iterable[str] = ()) -> None:
        self._models = {model.id: model for model in models}
        self._unserved = frozenset(unserved)

    def serving(self, served: Callable[[ModelInfo], bool]) -> ModelRegistry:
        """The registry with only the models `served` accepts; the others are known, not served."""
        kept = [model for model in self._models.values() if served(model)]
        dropped = {model.id for model in self._models.values() if not served(model)}
        return ModelRegistry(kept, unserved=self._unserved | dropped)

    @classmethod
    def load(cls, text: str | None = None) -> ModelRegistry:
        """The registry from `text` (JSON), or from the packaged `app/models.json`."""
        if text is None:
            text = resources.files("app").joinpath("models.json").read_text(encoding="utf-8")
        models = []
        for row in json.loads(text)["models"]:
            fields: dict[str, Any] = {
                key: tuple(value) if isinstance(value, list) else value for key, value in row.items()
            }
            models.append(ModelInfo(**fields))
        return cls(models)

    def get(self, model_id: str) -> ModelInfo:
        """Raises UnknownModelError naming `model_id` when it is not a realtime model here."""
        try:
            return self._models[model_id]
        except KeyError:
            if model_id in self._unserved:
                raise UnknownModelError(
                    f"realtime model {model_id!r} is not served by this deployment",
                    field="model",
                    details={"field": "model"},
                ) from None
            known = ", ".join(self._models)
            raise UnknownModelError(
                f"unknown realtime model {model_id!r} (known: {known})",
                field="model",
                details={"field": "model"},
            ) from None

    def to_json(self) -> list[dict[str, Any]]:
        return [model.to_json() for model in self._models.values()]


def check_capabilities(config: dict[str, Any], registry: ModelRegistry) -> ModelInfo:
    """The model of `config`, once it is known to support everything `config` asks for.

    Raises:
        MissingModelError, UnknownModelError, UnsupportedVoiceError, UnsupportedReasoningEffortError,
        UnsupportedTurnDetectionError, UnsupportedModalitiesError, UnsupportedTranslationError.
    """
    model_id = config.get("model")
    if not model_id:
        raise MissingModelError(
            "config.model is required: name a realtime model (see GET /v3/models?type=realtime)",
            field="model",
        )
    info = registry.get(model_id)
    voice = config.get("voice")
    if voice and voice not in info.voices:
        raise UnsupportedVoiceError(
            f"{info.id} has no voice {voice!r} (voices: {', '.join(info.voices)})", field="voice"
        )
    if config.get("reasoning_effort") and not info.reasoning_effort:
        raise UnsupportedReasoningEffortError(
            f"{info.id} does not take reasoning_effort", field="reasoning_effort"
        )
    turn_type = (config.get("turn_detection") or {}).get("type")
    if turn_type and turn_type not in info.turn_detection:
        raise UnsupportedTurnDetectionError(
            f"{info.id} supports turn_detection {', '.join(info.turn_detection)}, not {turn_type!r}",
            field="turn_detection",
        )
    unsupported = [item for item in config.get("modalities") or () if item not in info.modalities]
    if unsupported:
        raise UnsupportedModalitiesError(
            f"{info.id} supports modalities {', '.join(info.modalities)}, not {', '.join(unsupported)}",
            field="modalities",
        )
    if config.get("translation_target_language") and not info.translation:
        raise UnsupportedTranslationError(
            f"{info.id} does not translate: translation_target_language needs a translation model",
            field="translation_target_language",
        )
    return info
