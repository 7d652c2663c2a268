"""What one session used: audio relayed each way and the provider's own token counts.

One `Usage` per session, created by the session core and handed to the upstream in `SessionInfo`:
the core counts the audio it relays (both directions, every upstream), a provider translator adds
the tokens its provider reports. When the session ends, `app.edge.realtime` reports it to `/metrics` and
the session-end log line carries `Usage.fields()`. Audio seconds are what an operator bills on
(docs/operations.md, "Usage").
"""

from __future__ import annotations

from dataclasses import dataclass


def base64_bytes(encoded: str) -> int:
    """Bytes a base64 string decodes to, without decoding it (RFC 4648: 4 characters, 3 bytes;
    each `=` of padding one byte less). The session core inlines it on its per-frame paths."""
    return len(encoded) * 3 // 4 - encoded.endswith("=") - encoded.endswith("==")


@dataclass(slots=True)
class Usage:
    """One session's usage; `provider` is `openai`, `xai`, `gemini`, `local` or `relay`."""

    provider: str = "local"
    input_rate: int = 24_000  # PCM16 mono samples per second, from the model's registry entry
    output_rate: int = 24_000
    input_audio_bytes: int = 0
    output_audio_bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def input_audio_seconds(self) -> float:
        return self.input_audio_bytes / (2 * self.input_rate)

    @property
    def output_audio_seconds(self) -> float:
        return self.output_audio_bytes / (2 * self.output_rate)

    def add_tokens(self, input_tokens: object, output_tokens: object) -> None:
        """Add a provider's usage report; members that are not non-negative integers count as 0."""
        self.input_tokens += _count(input_tokens)
        self.output_tokens += _count(output_tokens)

    def fields(self) -> dict[str, object]:
        """The session-end log line's usage fields: audio seconds and provider tokens, each way."""
        return {
            "audio_in_s": round(self.input_audio_seconds, 3),
            "audio_out_s": round(self.output_audio_seconds, 3),
            "tokens_in": self.input_tokens,
            "tokens_out": self.output_tokens,
        }


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0
