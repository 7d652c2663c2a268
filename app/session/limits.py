"""A session's limits (docs/protocol.md): time (start, idle, maximum), the client's rate, the memory budget.

Pure counters on the session's clock: the session core records what happened and asks what to do;
nothing here waits or keeps time by itself.
"""

from __future__ import annotations

from app.config import Settings
from app.sessionerrors import InvalidConfigError

EXCESS_SECONDS = 5.0  # how long a client may stay over its rate before the session ends
CALM_SECONDS = 1.0  # how long a client must stay within its rate for an excess to be over


class Limits:
    """The time limits of one session, opened at `opened_at` (seconds on the session's clock)."""

    def __init__(self, settings: Settings, *, opened_at: float) -> None:
        self._start = settings.start_timeout_seconds
        self._idle = settings.idle_timeout_seconds
        self._longest = settings.max_duration_seconds
        self.opened_at = opened_at
        self.last_frame = opened_at
        self.started = False

    def deadline(self) -> float:
        """The nearest moment a limit could pass; the idle one moves with every client frame."""
        deadline = min(self.last_frame + self._idle, self.opened_at + self._longest)
        if not self.started:
            deadline = min(deadline, self.opened_at + self._start)
        return deadline

    def passed(self, now: float) -> tuple[str, str] | None:
        """The code and message of a limit that has passed at `now`, or None."""
        if not self.started and now >= self.opened_at + self._start:
            return "start_timeout", f"no valid session.start within {self._start:g} s"
        if now >= self.opened_at + self._longest:
            return "max_duration", f"the session reached its maximum length of {self._longest:g} s"
        if now >= self.last_frame + self._idle:
            return "idle_timeout", f"no frame from the client for {self._idle:g} s"
        return None


class Bucket:
    """A token bucket refilled at `rate` per second, holding at most one second's worth (the burst).

    A frame is always taken (it has been read already); the bucket may go below zero, and the next
    read waits until it is back at zero.
    """

    def __init__(self, rate: float, *, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self._at = now

    def take_at(self, amount: float, now: float) -> bool:
        """Refill for the time up to `now`, then take `amount` (one call per frame); True if that
        left the bucket below zero."""
        tokens = self.tokens
        if now > self._at:
            tokens += (now - self._at) * self.rate
            if tokens > self.rate:
                tokens = self.rate
            self._at = now
        self.tokens = tokens = tokens - amount
        return tokens < 0

    def ready_at(self) -> float:
        """When the bucket is back at zero (now, if it is not below)."""
        return self._at + max(0.0, -self.tokens) / self.rate


#: Values one client frame may hold (counted as its `,`, `{` and `[`, strings included): a frame
#: is parsed and checked in time proportional to its values, so past this it is refused unread and no
#: frame holds the event loop for more than a few milliseconds (docs/protocol.md, "Limits").
MAX_VALUES = 20_000
#: Values a `session.start` or `session.update` may hold: checking a config costs about 1.5 µs a value.
MAX_CONFIG_VALUES = 4096
#: What each counted value costs in the client's byte rate, on top of its bytes: a frame of many
#: small values is charged for the work it makes, not only its size (`app.server.frames`).
VALUE_BYTES = 64


def check_config_values(counted: int) -> None:
    """Refuse a `session.start` or `session.update` of over `MAX_CONFIG_VALUES` values, unchecked.

    Raises:
        InvalidConfigError: naming the bound.
    """
    if counted > MAX_CONFIG_VALUES:
        raise InvalidConfigError(f"a config holds at most {MAX_CONFIG_VALUES} values")


def values(frame: str | bytes) -> int:
    """An upper bound on a JSON frame's values beyond the first: its `,`, `{` and `[`."""
    if isinstance(frame, bytes):
        return frame.count(b",") + frame.count(b"{") + frame.count(b"[")
    return frame.count(",") + frame.count("{") + frame.count("[")


def frame_size(frame: str | bytes) -> int:
    """Bytes on the wire: a text frame's UTF-8 length (encoded only when it could matter)."""
    if isinstance(frame, bytes):
        return len(frame)
    return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))


class Rate:
    """The client's frame and byte rate: back-pressure while over it, an end when that lasts.

    A frame is over the rate when it leaves a bucket below zero (the next read has to wait). The
    excess starts with the first such frame and ends only once no frame has been over for
    `CALM_SECONDS` (one refill of the burst): a frame read late, because the wait overslept, may
    leave the buckets just above zero while the client was waiting all along.
    """

    def __init__(self, settings: Settings, *, now: float) -> None:
        self._frames = Bucket(settings.max_frames_per_second, now=now)
        self._bytes = Bucket(settings.max_bytes_per_second, now=now)
        self.over_since: float | None = None
        self._last_over = now

    def admit(self, size: int, now: float) -> bool:
        """Count a frame of `size` bytes read at `now`; False once the excess has lasted too long."""
        if not (self._frames.take_at(1, now) | self._bytes.take_at(size, now)):
            if now - self._last_over >= CALM_SECONDS:
                self.over_since = None
            return True
        self._last_over = now
        if self.over_since is None:
            self.over_since = now
        return now - self.over_since < EXCESS_SECONDS

    def read_after(self) -> float:
        """The earliest moment the next client frame may be read."""
        return max(self._frames.ready_at(), self._bytes.ready_at())


class Budget:
    """Bytes a session holds, by where they are held, against one limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._total = 0  # the sum of `_held`, kept as it changes (asked after every event)

    def hold(self, where: str, size: int) -> bool:
        """Record that `where` now holds `size` bytes; False when the session is over its budget."""
        self._total += size - self._held.get(where, 0)
        self._held[where] = size
        return self._total <= self.limit

    def fits(self, where: str, size: int) -> bool:
        """Whether the session would be within its budget were `where` to hold `size` bytes."""
        return self._total - self._held.get(where, 0) + size <= self.limit

    @property
    def total(self) -> int:
        return self._total
