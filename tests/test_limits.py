"""Session limits as pure arithmetic: the next deadline, and which limit has passed."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.limits import Limits

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
