"""Revocations: end a session, an API key's, a project's or a signing key's tickets and sessions.

A revocation names one thing (`session`, `api_key`, `project` or `kid`) and a moment. A session id
or an API key is revoked outright: the key's tickets are refused (`401 ticket_revoked`), its
sessions end (`session.terminating` `revoked`) and the mint refuses it. A project or a signing key
is revoked for what was issued until the moment: its earlier tickets are refused and its sessions
end, later tickets work (to stop a project for good, revoke its keys). An entry lives for the
longest ticket lifetime plus the longest session (docs/decisions.md); the API key file keeps a
key's own revocation for good.

MemoryRevocations   memory://  one process's revocations
RedisRevocations    redis://   a hash every edge reads at start and after each reconnection, plus
                               pub/sub for speed; checks fail closed while the edge is not in sync

Every edge holds the revocations in memory (`RevocationIndex`): a handshake looks them up without a
round trip. Redis's side is in `app.edge.redisrevocations`; `make revoke` is
`python -m app.ops.revocations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from app.config import Settings
from app.exceptions import TicketRevokedError
from app.tickets.keys import MAX_TICKET_SECONDS

Kind = Literal["session", "api_key", "project", "kid"]
KINDS: tuple[Kind, ...] = ("session", "api_key", "project", "kid")
MAX_VALUE = 200  # characters of an id a revocation names
MAX_REASON = 500
_OUTRIGHT = frozenset({"session", "api_key"})


def lifetime(*, leeway: int, skew_margin: int, max_duration: float) -> float:
    """Seconds a revocation must be kept: a ticket issued just before it may be redeemed for up to
    its lifetime (plus leeway and clock skew), and its session then lasts up to the maximum."""
    return MAX_TICKET_SECONDS + leeway + skew_margin + max_duration


def settings_lifetime(settings: Settings) -> float:
    return lifetime(
        leeway=settings.leeway_seconds,
        skew_margin=settings.clock_skew_margin_seconds,
        max_duration=settings.max_duration_seconds,
    )


@dataclass(frozen=True)
class Revocation:
    """One revocation: `kind` and `value` name what, `at` when (epoch seconds), `project` whose."""

    kind: Kind
    value: str
    at: float
    expires_at: float
    project: str | None = None  # the project it belongs to (None for a signing key: every project)
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Revocation | None:
        """The revocation `data` describes, or None when it is malformed (never raises)."""
        if not isinstance(data, dict):
            return None
        kind, value, at, expires = data.get("kind"), data.get("value"), data.get("at"), data.get("expires_at")
        project, reason = data.get("project"), data.get("reason", "")
        if kind not in KINDS or not isinstance(value, str) or not isinstance(reason, str):
            return None
        if not all(
            isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) for n in (at, expires)
        ):
            return None
        if project is not None and not isinstance(project, str):
            return None
        return cls(kind, value, float(at), float(expires), project, reason)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Subject:
    """What a ticket or session is, as revocations see it."""

    project: str
    api_key_id: str | None
    kid: str | None
    issued_at: float  # the ticket's `iat` (a bearer-key session: when it opened)
    session_id: str | None = None


class RevocationIndex:
    """The revocations in force, by kind and value; the one place that says what a revocation covers."""

    def __init__(self) -> None:
        self._entries: dict[str, Revocation] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, revocation: Revocation) -> bool:
        """Keep `revocation` (the later of two for one thing); True when it covers more than before."""
        known = self._entries.get(revocation.key)
        if known is not None and known.at >= revocation.at:
            return False
        self._entries[revocation.key] = revocation
        return True

    def replace(self, revocations: list[Revocation]) -> list[Revocation]:
        """Take `revocations` as the whole set, keeping what is known already; returns the new ones."""
        fresh = [revocation for revocation in revocations if self.add(revocation)]
        return fresh

    def get(self, kind: Kind, value: str) -> Revocation | None:
        return self._entries.get(f"{kind}:{value}")

    def expire(self, now: float) -> None:
        for key in [key for key, rev in self._entries.items() if rev.expires_at <= now]:
            del self._entries[key]

    def all(self) -> list[Revocation]:
        return sorted(self._entries.values(), key=lambda rev: rev.at)

    def matching(self, subject: Subject) -> Revocation | None:
        """The revocation that covers `subject`, or None."""
        entries = self._entries
        if not entries:
            return None
        for kind, value in (
            ("session", subject.session_id),
            ("api_key", subject.api_key_id),
            ("project", subject.project),
            ("kid", subject.kid),
        ):
            if value is None:
                continue
            found = entries.get(f"{kind}:{value}")
            # A session id, and an API key (its mint is refused too), are revoked outright; a project
            # or a signing key for what was issued until the revocation.
            if found is not None and (kind in _OUTRIGHT or subject.issued_at <= found.at):
                return found
        return None


def refusal(revocation: Revocation) -> TicketRevokedError:
    what = {"session": "session", "api_key": "API key", "project": "project", "kid": "signing key"}
    because = f": {revocation.reason}" if revocation.reason else ""
    return TicketRevokedError(f"the ticket's {what[revocation.kind]} was revoked{because}")


Listener = Callable[[Revocation], object]


class Revocations(Protocol):
    """The edge's view: check a ticket (no I/O), add a revocation, list them, hear of new ones."""

    def check(self, subject: Subject) -> bool:
        """Raise TicketRevokedError when a revocation held here covers `subject`; return whether
        what is held here is current (False: `refresh()` and check again)."""
        ...

    async def refresh(self) -> None:
        """Read every revocation from the store now.

        Raises:
            ReplayStoreUnavailableError: the store did not answer (the caller fails closed).
        """
        ...

    def matching(self, subject: Subject) -> Revocation | None: ...

    def revoked_key(self, key_id: str) -> Revocation | None:
        """The revocation of API key `key_id` held here, if any (the mint refuses the key)."""
        ...

    async def add(self, revocation: Revocation) -> None: ...

    async def entries(self) -> list[Revocation]: ...

    def listen(self, listener: Listener) -> None: ...

    def apply(self, revocation: Revocation) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryRevocations:
    """memory://: the revocations of this one process."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._index = RevocationIndex()
        self._listeners: list[Listener] = []

    def check(self, subject: Subject) -> bool:
        found = self._index.matching(subject)
        if found is not None:
            raise refusal(found)
        return True

    async def refresh(self) -> None:
        return None

    def matching(self, subject: Subject) -> Revocation | None:
        return self._index.matching(subject)

    def revoked_key(self, key_id: str) -> Revocation | None:
        return self._index.get("api_key", key_id)

    def apply(self, revocation: Revocation) -> None:
        """Hold `revocation` here (no I/O): refuse its tickets and end its sessions in this process."""
        self._index.expire(self._clock())
        self._apply(revocation)

    def _apply(self, revocation: Revocation) -> None:
        if self._index.add(revocation):
            for listener in self._listeners:
                listener(revocation)

    async def add(self, revocation: Revocation) -> None:
        self._index.expire(self._clock())
        self._apply(revocation)

    async def entries(self) -> list[Revocation]:
        self._index.expire(self._clock())
        return self._index.all()

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
