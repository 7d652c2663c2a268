"""What the session loop needs from a model: connect with the effective config, then trade events."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from app.session.models import ModelInfo
from app.session.usage import Usage


@dataclass(frozen=True)
class SessionInfo:
    """What an upstream is told when a session starts: the effective (overlaid, checked) config."""

    session_id: str
    project: str
    config: dict[str, Any]
    model: ModelInfo
    #: Fields the ticket bound whose content the ticket holder must not read back (instructions,
    #: tools): an upstream uses them, but a diagnostic that shows the config only says they are set.
    hidden: frozenset[str] = frozenset()
    #: The session's usage: the core counts the audio relayed, a provider's translator the tokens.
    usage: Usage = field(default_factory=Usage, compare=False)


class UpstreamConnection(Protocol):
    async def send(self, event: dict[str, Any]) -> None:
        """Forward one checked client event; `session.update` carries the whole effective config.

        Raises:
            UpstreamError: the upstream failed or did not take the event in time.
        """
        ...

    async def receive(self) -> dict[str, Any] | str | None:
        """The next server event, or None when the upstream has ended the session cleanly.

        A `str` is the event already encoded as a JSON object (a relay's frame), sent on unchanged.

        Raises:
            UpstreamError: the upstream failed.
        """
        ...


@runtime_checkable
class Buffered(Protocol):
    """Optional for a connection: what it holds for the session, counted against its memory budget.

    A connection that queues events or input (a model's turn buffers, an outbox waiting for the
    client) implements it; the session asks after every event in either direction and ends with
    `session_overloaded` past `REALTIME_SESSION_MEMORY_BYTES`.
    """

    def buffered_bytes(self) -> int: ...


@runtime_checkable
class Filling(Protocol):
    """Optional for a `Buffered` connection whose buffers grow between the session's events.

    A connection that reads its upstream in a task of its own fills its queue while the session
    waits on a slow client; it calls `notify` after each growth so the budget is checked at once.
    """

    def on_growth(self, notify: Callable[[], None]) -> None: ...


class Upstream(Protocol):
    def connect(self, session: SessionInfo) -> AbstractAsyncContextManager[UpstreamConnection]:
        """Open a connection for one session; leaving the context closes it.

        Raises:
            UpstreamError: the upstream cannot be reached or refused the session.
        """
        ...
