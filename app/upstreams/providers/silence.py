"""The silence check: once an answer is asked for, each wait for the provider's next message is bounded."""

from __future__ import annotations

import asyncio
from typing import Any

from app.exceptions import UpstreamError


class SilenceCheck:
    """Part of `ProviderConnection`: a lazily moved timer interrupts the wait on the provider when
    it is silent past `response_timeout` after an answer was asked for; `receive` then raises
    UpstreamError. The same interruption hands over an event of ours to a `receive` that waits."""

    # Set by `ProviderLink.__init__`.
    _provider: str
    _response_timeout: float
    _answer_due: float | None
    _silence: asyncio.TimerHandle | None
    _receiving: asyncio.Task[Any] | None
    _interrupting: bool
    _silenced: bool

    def _expect_answer(self) -> None:
        """The provider must answer: the wait for its next message is bounded from now."""
        loop = asyncio.get_running_loop()
        self._answer_due = loop.time() + self._response_timeout
        if self._silence is None:
            self._silence = loop.call_at(self._answer_due, self._check_silence)

    def _check_silence(self) -> None:
        """The answer's deadline may have passed: a timer that moves lazily with `_answer_due`
        (each provider message moves it; a timer per message would cost every frame)."""
        self._silence = None
        due = self._answer_due
        if due is None:
            return
        loop = asyncio.get_running_loop()
        if self._receiving is None and loop.time() >= due:
            due = self._answer_due = loop.time() + self._response_timeout  # it waits on the browser
        if loop.time() < due:
            self._silence = loop.call_at(due, self._check_silence)
            return
        self._silenced = True
        self._interrupt()

    def _wake(self) -> None:
        """An event of ours was queued: a `receive` waiting on the provider hands it over now."""
        self._interrupt()

    def _interrupt(self) -> None:
        # Cancelling websockets' `recv` loses nothing: the next call returns the next message.
        task = self._receiving
        if task is not None and not self._interrupting:
            self._interrupting = True
            task.cancel()

    def _interrupted(self) -> bool:
        """The wait on the provider was cancelled. By `_interrupt` to hand over an event: True (the
        cancellation is taken back); by the silence check: UpstreamError in its place; from
        outside (as well): False, and the cancellation goes on."""
        if not self._interrupting:
            return False
        self._interrupting = False
        silenced, self._silenced = self._silenced, False
        task = asyncio.current_task()
        if task is None or task.uncancel():
            return False
        if silenced:
            raise UpstreamError(
                f"{self._provider}: the provider stopped answering (nothing for "
                f"{self._response_timeout:g} s after an answer was asked for)"
            ) from None
        return True
