"""Session limits as pure arithmetic: the next deadline, and which limit has passed."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.session.limits import Limits, Rate

OPENED = 1_000.0


def limits(start: float = 10, idle: float = 30, longest: float = 100) -> Limits:
    settings = Settings(
        keys_dir=Path("unused"),
        start_timeout_seconds=start,
        idle_timeout_seconds=idle,
        max_duration_seconds=longest,
    )
    return Limits(settings, opened_at=OPENED)


def test_before_the_start_the_start_deadline_comes_first() -> None:
    assert limits().deadline() == OPENED + 10
    assert limits().passed(OPENED + 9.9) is None
    assert limits().passed(OPENED + 10) == ("start_timeout", "no valid session.start within 10 s")


def test_once_started_the_idle_deadline_moves_with_each_frame() -> None:
    session = limits()
    session.started = True
    assert session.deadline() == OPENED + 30
    session.last_frame = OPENED + 25
    assert session.deadline() == OPENED + 55
    assert session.passed(OPENED + 54) is None
    assert session.passed(OPENED + 55) == ("idle_timeout", "no frame from the client for 30 s")


def test_the_maximum_duration_does_not_move() -> None:
    session = limits()
    session.started = True
    session.last_frame = OPENED + 95
    assert session.deadline() == OPENED + 100
    code, message = session.passed(OPENED + 100) or ("", "")
    assert code == "max_duration" and "100 s" in message


@pytest.mark.parametrize(
    ("now", "code"),
    [(OPENED + 10, "start_timeout"), (OPENED + 100, "start_timeout")],
    ids=["start", "start-wins-over-max"],
)
def test_a_session_never_started_ends_as_start_timeout(now: float, code: str) -> None:
    passed = limits().passed(now)
    assert passed is not None and passed[0] == code


# The client's rate: fake time and a driver that reads a frame once it has come and the rate allows

FRAMES = 10  # per second, and the burst; the byte rate (1,024 a second) matters only with large frames
FLOOD = None  # a phase in which the client always has a frame waiting

Phase = tuple[float, float, float | None]  # from, until (seconds after opening), frames a second


def rate() -> Rate:
    settings = Settings(keys_dir=Path("unused"), max_frames_per_second=FRAMES, max_bytes_per_second=1_024)
    return Rate(settings, now=OPENED)


def ended_at(phases: list[Phase], *, late: tuple[float, ...] = (0.0,), size: int = 1) -> float | None:
    """Read a client's frames as the driver does: a frame waits for `read_after()`, and such a wait
    ends late by `late` in turn. When the rate ended the session (seconds after opening), if it did."""
    limit = rate()
    now, reads = 0.0, 0
    for start, end, per_second in phases:
        sent = 0
        while True:
            arrival = start if per_second is None else start + sent / per_second
            now = max(now, arrival)
            ready = limit.read_after() - OPENED
            if ready > now:
                now = ready + late[reads % len(late)]
            if now >= end:
                break
            reads, sent = reads + 1, sent + 1
            if not limit.admit(size, OPENED + now):
                return now
    return None


@pytest.mark.parametrize(
    ("phases", "late", "size", "ends"),
    [
        ([(0, 20, FRAMES * 0.9)], (0.0,), 1, None),
        ([(0, 20, FLOOD)], (0.0,), 1, (5.0, 5.5)),
        ([(0, 20, FLOOD)], (0.0, 0.15), 1, (5.0, 5.5)),
        ([(0, 20, FLOOD)], (0.15,), 1, (5.0, 5.5)),
        ([(0, 20, FLOOD)], (0.12, 0.0, 0.0, 0.3), 1, (5.0, 5.5)),
        ([(0, 4, FLOOD), (5.5, 9, FLOOD)], (0.0,), 1, None),
        ([(0, 4, FLOOD), (4.5, 9, FLOOD)], (0.0,), 1, (5.0, 5.5)),
        ([(0, 4, FLOOD), (4, 20, FRAMES / 2), (20, 20.3, FLOOD)], (0.0,), 1, None),
        ([(0, 20, FLOOD)], (0.0,), 600, (5.0, 5.5)),
    ],
    ids=[
        "within",
        "flood",
        "flood-every-other-wake-late",
        "flood-every-wake-late",
        "flood-now-and-then-late",
        "a-calm-second-ends-the-excess",
        "a-short-pause-does-not",
        "back-within-the-rate-not-ended-later",
        "bytes",
    ],
)
def test_the_rate_ends_a_lasting_excess(
    phases: list[Phase], late: tuple[float, ...], size: int, ends: tuple[float, float] | None
) -> None:
    """A wake that oversleeps reads a waiting frame with the buckets above zero: still the flood."""
    at = ended_at(phases, late=late, size=size)
    if ends is None:
        assert at is None, at
    else:
        assert at is not None and ends[0] <= at <= ends[1], at
