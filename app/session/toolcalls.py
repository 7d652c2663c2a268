"""The `tool.call`s a session sent and has not seen answered: a `tool.result` must answer one of them."""

from __future__ import annotations

from app.sessionerrors import InvalidEventError

#: Tool calls a session remembers until their `tool.result` (the oldest forgotten past this many).
MAX_OPEN_TOOL_CALLS = 128


class ToolCalls:
    """Ids of `tool.call`s sent and not yet answered, in order (the oldest forgotten past the bound)."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, None] = {}

    def sent(self, tool_call_id: str) -> None:
        """A `tool.call` with this id went to the client."""
        self._open[tool_call_id] = None
        if len(self._open) > MAX_OPEN_TOOL_CALLS:
            del self._open[next(iter(self._open))]

    def answer(self, tool_call_id: str, *, tools: bool) -> None:
        """A `tool.result` answers a `tool.call` this session sent, once, and only while it has tools.

        Raises:
            InvalidEventError: no such call is open (never sent, answered already, or no tools).
        """
        if not tools or self._open.pop(tool_call_id, False) is False:
            raise InvalidEventError(
                "tool.result must answer a tool.call of this session: its tool_call_id names none "
                "that is open (never sent, already answered, or the session has no tools)"
            )
