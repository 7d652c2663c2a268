"""What a `SessionCore` asks its driver to do: send to either side, connect, close or terminate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.session.upstream import SessionInfo

# WebSocket close codes (RFC 6455 section 7.4.1).
NORMAL, POLICY, TOO_BIG, SERVER_ERROR, RESTART = 1000, 1008, 1009, 1011, 1012
CLOSE_CODES = {
    "start_timeout": POLICY,
    "session_overloaded": POLICY,
    "rate_limited": POLICY,
    "upstream_error": SERVER_ERROR,
    "server_shutdown": RESTART,
    "revoked": POLICY,
}
Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendClient:
    event: Event | str  # a `str` is an event already encoded (a relayed frame)


@dataclass(frozen=True, slots=True)
class SendUpstream:
    event: Event


@dataclass(frozen=True, slots=True)
class Connect:
    info: SessionInfo


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Terminate:
    code: str
    message: str

    @property
    def close_code(self) -> int:
        return CLOSE_CODES.get(self.code, NORMAL)

    @property
    def event(self) -> Event:
        return {"type": "session.terminating", "error": {"code": self.code, "message": self.message}}


Action = SendClient | SendUpstream | Connect | Close | Terminate
Ending = Close | Terminate
