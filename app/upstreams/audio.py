"""PCM16 audio for the local model: its voice (a sine tone) and the windows its detector listens to."""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Iterator
from functools import cache

WINDOW_MS = 20  # the detector's window


@cache
def tone(rate: int, milliseconds: int, frequency: float = 440.0, amplitude: float = 0.2) -> bytes:
    """PCM16 little-endian mono sine tone: the local model's voice."""
    count = rate * milliseconds // 1000
    samples = array.array(
        "h", (int(amplitude * 32767 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(count))
    )
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def pcm16(audio: bytes) -> array.array[int]:
    """The samples of PCM16 little-endian mono audio (a trailing odd byte is dropped)."""
    samples = array.array("h")
    samples.frombytes(audio[: len(audio) - len(audio) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def duration_ms(audio: bytes, rate: int) -> float:
    return len(audio) // 2 * 1000 / rate


def windows(audio: bytes, rate: int) -> Iterator[tuple[float, float]]:
    """(length in ms, RMS energy in [0, 1]) of each `WINDOW_MS` window of `audio`; the last may be shorter."""
    samples = pcm16(audio)
    window = max(1, rate * WINDOW_MS // 1000)
    for start in range(0, len(samples), window):
        chunk = samples[start : start + window]
        yield (
            len(chunk) * 1000 / rate,
            math.sqrt(sum(sample * sample for sample in chunk) / len(chunk)) / 32768,
        )
