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
round trip. `python -m app.edge.revocations` is `make revoke`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.config import Settings
from app.edge.fleetredis import FleetRedis, fleet_key
from app.edge.replay import RETRY_AFTER_SECONDS
from app.exceptions import KeySetError, ReplayStoreUnavailableError, SettingsError, TicketRevokedError
from app.tickets.keys import MAX_TICKET_SECONDS

logger = logging.getLogger(__name__)

Kind = Literal["session", "api_key", "project", "kid"]
KINDS: tuple[Kind, ...] = ("session", "api_key", "project", "kid")
MAX_VALUE = 200  # characters of an id a revocation names
MAX_REASON = 500
#: How often an edge on Redis rereads every revocation, besides pub/sub (a message lost in a
#: reconnection is found then; a Redis that stopped answering is noticed then).
RESYNC_SECONDS = 2.0
_OUTRIGHT = frozenset({"session", "api_key"})


def lifetime(*, leeway: int, skew_margin: int, max_duration: float) -> float:
    """Seconds a revocation must be kept: a ticket issued just before it may be redeemed for up to
    its lifetime (plus leeway and clock skew), and its session then lasts up to the maximum."""
    return MAX_TICKET_SECONDS + leeway + skew_margin + max_duration


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


class RedisRevocations(MemoryRevocations):
    """redis://: a hash of revocations (`<prefix>revocations`) and a channel announcing each new one.

    The edge subscribes first, then reads the hash, so nothing added in between is missed; it
    rereads the hash every `RESYNC_SECONDS` and after every reconnection. Until it follows the store
    again, each handshake reads the hash itself (`refresh`), and refuses with
    `replay_store_unavailable` when Redis does not answer: a revoked ticket must not pass because
    this edge could not hear of it (as single use fails closed).
    """

    def __init__(self, url: str, *, prefix: str, timeout: float, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self._url = url
        self._timeout = timeout
        self.hash_key = fleet_key(prefix, "revocations")
        self.channel = fleet_key(prefix, "revocations:new")
        self._redis = FleetRedis(url, timeout=timeout, name="realtime-revocations")
        self._in_sync = False
        self._task: asyncio.Task[None] | None = None

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def check(self, subject: Subject) -> bool:
        super().check(subject)
        return self._in_sync

    async def refresh(self) -> None:
        """Read the hash now: the handshake's own look while this edge is not following the store
        (starting, or reconnecting after a Redis restart), so one that answers refuses nothing."""
        revocations = await self._read()
        self._index.expire(self._clock())
        for revocation in revocations:
            self._apply(revocation)

    async def add(self, revocation: Revocation) -> None:
        """Store it in the hash (durable), announce it, and apply it here at once.

        Raises:
            ReplayStoreUnavailableError: Redis did not take it.
        """
        now = self._clock()
        await self._redis.run(
            lambda client: write(
                client, self.hash_key, self.channel, revocation, timeout=self._timeout, now=now
            )
        )
        self._apply(revocation)

    async def entries(self) -> list[Revocation]:
        self._index.replace(await self._read())
        return await super().entries()

    async def _read(self) -> list[Revocation]:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.run(lambda client: client.hgetall(self.hash_key))
        except (RedisError, OSError, TimeoutError) as exc:
            raise ReplayStoreUnavailableError(
                f"the store did not answer ({type(exc).__name__})", retry_after=RETRY_AFTER_SECONDS
            ) from None
        now = self._clock()
        found = []
        for value in raw.values():
            try:
                revocation = Revocation.from_json(json.loads(value))
            except ValueError:
                revocation = None
            if revocation is not None and revocation.expires_at > now:
                found.append(revocation)
        return found

    async def start(self) -> None:
        """Read the revocations once now (so a healthy edge is in sync at once) and keep following."""
        try:
            self._sync(await self._read())
        except ReplayStoreUnavailableError as exc:
            logger.warning("revocations: %s; handshakes are refused until it answers", exc.message)
        self._task = asyncio.create_task(self._follow(), name="revocations")

    def _sync(self, revocations: list[Revocation]) -> None:
        self._index.expire(self._clock())
        for revocation in revocations:
            self._apply(revocation)
        if not self._in_sync:
            logger.info("revocations: in sync with the store (%d in force)", len(self._index))
        self._in_sync = True

    async def _follow(self) -> None:
        """Subscribe, read the hash, then apply each announcement; on any failure, start again.

        However this task ends, the edge stops trusting what it holds (each handshake reads the
        hash itself from then on): never a stale set taken for a current one.
        """
        try:
            await self._follow_forever()
        finally:
            self._in_sync = False

    async def _follow_forever(self) -> None:
        while True:
            pubsub = self._redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self.channel)
                self._sync(await self._read())
                resync = asyncio.get_running_loop().time() + RESYNC_SECONDS
                while True:
                    message = await pubsub.get_message(timeout=RESYNC_SECONDS / 4)
                    if message is not None and message.get("type") == "message":
                        try:
                            revocation = Revocation.from_json(json.loads(message["data"]))
                        except ValueError:
                            revocation = None
                        if revocation is not None:
                            self._apply(revocation)
                    if asyncio.get_running_loop().time() >= resync:
                        self._sync(await self._read())
                        resync = asyncio.get_running_loop().time() + RESYNC_SECONDS
            except (RedisError, OSError, TimeoutError, ReplayStoreUnavailableError) as exc:
                if self._in_sync:
                    logger.warning(
                        "revocations: lost the store (%s); handshakes are refused until it answers",
                        type(exc).__name__,
                    )
                self._in_sync = False
            finally:
                try:
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()
                except (RedisError, OSError, TimeoutError):
                    pass  # the connection is gone with the store; nothing to release
            await asyncio.sleep(RESYNC_SECONDS / 8)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._redis.aclose()


async def write(
    client: aioredis.Redis, hash_key: str, channel: str, revocation: Revocation, *, timeout: float, now: float
) -> None:
    """Store `revocation` in the hash (dropping expired entries), keep the hash as long as its newest
    entry, and announce it on the channel.

    Raises:
        ReplayStoreUnavailableError: Redis did not answer or refused.
    """
    body = json.dumps(revocation.to_json(), separators=(",", ":"))
    try:
        async with asyncio.timeout(timeout):
            stored = await client.hgetall(hash_key)
            stale, last = [], revocation.expires_at
            for field, value in stored.items():
                try:
                    known = Revocation.from_json(json.loads(value))
                except ValueError:
                    known = None
                if known is None or known.expires_at <= now:
                    stale.append(field)
                else:
                    last = max(last, known.expires_at)
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(hash_key, revocation.key, body)
                if stale:
                    pipe.hdel(hash_key, *stale)
                # The hash lives as long as its longest-lived entry; the others are dropped as they
                # expire, by whoever writes next (and ignored by readers meanwhile).
                pipe.pexpire(hash_key, max(1, math.ceil((last - now) * 1000)))
                pipe.publish(channel, body)
                await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        raise ReplayStoreUnavailableError(
            f"the store did not take the revocation ({type(exc).__name__}); try again",
            retry_after=RETRY_AFTER_SECONDS,
        ) from None


def record(settings: Settings, revocation: Revocation) -> bool:
    """Store `revocation` where the fleet reads it (`make revoke`, `make revoke-api-key`).

    Returns False on memory:// (revocations then live in the serving process: use the admin API).

    Raises:
        ReplayStoreUnavailableError: Redis did not take it.
    """
    if settings.replay_url == "memory://":
        return False

    async def send() -> None:
        client = FleetRedis(settings.replay_url, timeout=5, name="realtime-revoke")
        try:
            prefix = settings.replay_prefix
            await client.run(
                lambda redis: write(
                    redis,
                    fleet_key(prefix, "revocations"),
                    fleet_key(prefix, "revocations:new"),
                    revocation,
                    timeout=5,
                    now=time.time(),
                )
            )
        finally:
            await client.aclose()

    asyncio.run(send())
    return True


def settings_lifetime(settings: Settings) -> float:
    return lifetime(
        leeway=settings.leeway_seconds,
        skew_margin=settings.clock_skew_margin_seconds,
        max_duration=settings.max_duration_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.edge.revocations revoke --session ID | --project ID | --kid KID | --api-key ID`."""
    parser = argparse.ArgumentParser(prog="python -m app.edge.revocations", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    revoke = sub.add_parser("revoke", help="revoke across the fleet (REALTIME_REPLAY_URL must be redis://)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", help="a live session id (sess_...)")
    which.add_argument("--project", help="a project: its tickets issued so far and its live sessions")
    which.add_argument("--kid", help="a signing key id: the tickets it signed and their sessions")
    which.add_argument("--api-key", help="an API key id (key_...): its tickets and sessions")
    revoke.add_argument("--reason", default="", help="said to the clients whose sessions end")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
        kind: Kind
        if args.session:
            kind, value, project = "session", args.session, None
        elif args.project:
            kind, value, project = "project", args.project, args.project
        elif args.kid:
            kind, value, project = "kid", args.kid, None
        else:
            from app.tickets.apikeys import read_keys  # the key's project, for the admin API's listing

            stored = [key for key in read_keys(settings.api_keys_path) if key.id == args.api_key.strip()]
            kind, value, project = "api_key", args.api_key, stored[0].project if stored else None
        value = value.strip()
        if not value or len(value) > MAX_VALUE or len(args.reason) > MAX_REASON:
            print("error: the id must be 1 to 200 characters, the reason at most 500", file=sys.stderr)
            return 2
        now = time.time()
        revocation = Revocation(kind, value, now, now + settings_lifetime(settings), project, args.reason)
        if not record(settings, revocation):
            print(
                "error: REALTIME_REPLAY_URL is memory://: revocations live in the serving process; "
                "use its admin API (POST /v3/admin/revocations, docs/api.md)",
                file=sys.stderr,
            )
            return 1
    except (SettingsError, KeySetError, ReplayStoreUnavailableError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"revoked {kind} {value}; every edge refuses its tickets and ends its sessions within a second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
