"""Waiting for a condition in tests: poll it with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(
    condition: Callable[[], object],
    what: str = "the condition",
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> float:
    """Call `condition` until it is true; fail naming `what` once `timeout` seconds have passed.

    Returns the seconds it took.
    """
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(interval)
    return time.monotonic() - started
