"""The silence check: once an answer is asked for, each wait for the provider's next message is bounded."""

from __future__ import annotations

import asyncio

from app.exceptions import UpstreamError


class SilenceCheck:
    """Part of `ProviderConnection`: a lazily moved timer cancels the reader when the provider is
    silent past `response_timeout` after an answer was asked for; the reader then raises UpstreamError."""

    # Set by `ProviderLink.__init__`.
    _provider: str
    _response_timeout: float
    _reader: asyncio.Task[None] | None
    _answer_due: float | None
    _silence: asyncio.TimerHandle | None
    _receiving: bool
    _silenced: bool

    def _expect_answer(self) -> None:
        """The provider must answer: the reader's wait for its next message is bounded from now."""
        loop = asyncio.get_running_loop()
        self._answer_due = loop.time() + self._response_timeout
        if self._silence is None:
            self._silence = loop.call_at(self._answer_due, self._check_silence)

    def _check_silence(self) -> None:
        """The answer's deadline may have passed: a timer that moves lazily with `_answer_due`
        (each provider message moves it; a timer per message would cost every frame)."""
        self._silence = None
        due = self._answer_due
        if due is None or self._reader is None:
            return
        loop = asyncio.get_running_loop()
        if not self._receiving and loop.time() >= due:
            due = self._answer_due = loop.time() + self._response_timeout  # it waits on the browser
        if loop.time() < due:
            self._silence = loop.call_at(due, self._check_silence)
            return
        self._silenced = True
        self._reader.cancel()

    def _silent(self) -> None:
        """The reader's wait was cancelled: by the silence check, the provider stopped answering
        (raised in place of the cancellation); else the cancellation goes on."""
        task = asyncio.current_task()
        if not self._silenced or task is None:
            return
        self._silenced = False
        task.uncancel()
        raise UpstreamError(
            f"{self._provider}: the provider stopped answering (nothing for "
            f"{self._response_timeout:g} s after an answer was asked for)"
        ) from None
