"""A session's time limits (SPEC 6.4): the start deadline, the idle timeout and the maximum duration.

Pure: the session records when it opened, started and last heard a frame, and asks for the next
deadline and whether a limit has passed; the timer that acts on the answers is the session's.
"""

from __future__ import annotations

from app.config import Settings


class Limits:
    """The limits of one session, opened at `opened_at` (seconds on the session's clock)."""

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
