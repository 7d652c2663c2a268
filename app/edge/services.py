"""The long-lived parts of one app instance, built in the lifespan and reached by handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.clock import Clock
from app.config import Settings
from app.edge.leasekeeper import LeaseKeeper
from app.edge.leases import RedisLeases
from app.edge.metrics import Metrics
from app.edge.preflight import PER_PROCESS_WARNING, check_secret_modes, check_single_use
from app.edge.quota import MemoryQuota, Quota, RedisQuota
from app.edge.redisreplay import RedisReplayStore
from app.edge.redisrevocations import RedisRevocations
from app.edge.registry import SessionRegistry
from app.edge.replay import MemoryReplayStore, ReplayStore
from app.edge.revocations import MemoryRevocations, Revocation, Revocations, lifetime
from app.edge.skew import SkewWatch
from app.session.models import ModelRegistry
from app.session.upstream import Upstream
from app.tickets.bearer import ApiKeyStore
from app.tickets.keys import KeySet
from app.tickets.keysource import DirectoryKeySource, KeySource, SealKeySource
from app.upstreams import make_upstream, served_registry

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What handlers use: settings, clock, keys, API keys, replay store, sessions, upstream."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    registry: ModelRegistry
    keys: KeySource
    api_keys: ApiKeyStore
    replay: ReplayStore
    sessions: SessionRegistry
    upstream: Upstream
    seal_keys: SealKeySource
    skew: SkewWatch
    revocations: Revocations
    leases: RedisLeases | None = None  # redis://: the fleet's session leases and records
    lease_keeper: LeaseKeeper | None = None
    quota: Quota | None = None  # REALTIME_PROJECT_AUDIO_MINUTES_PER_DAY
    edge: str = ""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(cls, settings: Settings, *, clock: Clock, upstream: Upstream | None = None) -> Services:
        """Load keys, API keys and the model registry, and open the replay store.

        Raises:
            KeySetError: the key set (or the JWKS URL) cannot be loaded.
        """
        keys: KeySource
        check_secret_modes(settings)
        if settings.jwks_url:
            from app.tickets.jwks import JwksKeySource

            per_process = check_single_use(settings, KeySet.empty())  # before any fetch
            keys = JwksKeySource(
                settings.jwks_url,
                timeout=settings.jwks_timeout_seconds,
                poll_interval=settings.jwks_refresh_interval_seconds,
                clock=time.monotonic,
            )
            await keys.start()
        else:
            directory = DirectoryKeySource(settings.keys_dir, clock=clock.now)
            per_process = check_single_use(settings, directory.load())
            keys = directory
        if per_process:
            logger.warning("replay store: %s", PER_PROCESS_WARNING)
        seal_keys = open_seal_keys(settings, clock=clock)
        metrics = Metrics()
        metrics.watch_keys(keys.current)
        replay = open_replay_store(settings, clock=clock.now)
        for warning in await replay.setup_warnings():
            logger.warning("replay store: %s", warning)
        skew = SkewWatch(replay, leeway=settings.leeway_seconds, margin=settings.clock_skew_margin_seconds)
        await skew.start()
        metrics.replay_clock_offset.set_function(lambda: skew.offset or 0.0)
        sessions = SessionRegistry()
        revocations = open_revocations(settings, clock=clock.now)
        revocations.listen(sessions.revoke)
        await revocations.start()
        leases = None
        if settings.replay_url != "memory://":
            leases = RedisLeases(
                settings.replay_url,
                prefix=settings.replay_prefix,
                lease_seconds=settings.session_lease_seconds,
                timeout=settings.replay_timeout_seconds,
            )
        services = cls(
            settings=settings,
            clock=clock,
            metrics=metrics,
            registry=served_registry(settings, ModelRegistry.load()),
            keys=keys,
            api_keys=ApiKeyStore(settings.api_keys_path, clock=clock.now).load(),
            replay=replay,
            sessions=sessions,
            upstream=upstream
            or make_upstream(settings, dropped=metrics.provider_event_dropped, resumed=metrics.resumption),
            seal_keys=seal_keys,
            skew=skew,
            revocations=revocations,
            leases=leases,
            quota=open_quota(settings, clock=clock.now),
            edge=settings.edge_name or socket.gethostname(),
        )
        services.revoke_keys_from_file()
        services._tasks.append(asyncio.create_task(services._watch_key_file(), name="api-key revocations"))
        if leases is not None:
            keeper = LeaseKeeper(leases, sessions.records, lease_seconds=settings.session_lease_seconds)
            services.lease_keeper = keeper
            services._tasks.append(asyncio.create_task(keeper.run(), name="leases"))
        return services

    def revoke_keys_from_file(self) -> None:
        """Revoke (here) the tickets and sessions of every key the API key file marks revoked.

        `make revoke-api-key` marks the file; an edge that shares it ends the key's sessions within a
        second without the store (a fleet's edges also hear of it through the store).
        """
        span = lifetime(
            leeway=self.settings.leeway_seconds,
            skew_margin=self.settings.clock_skew_margin_seconds,
            max_duration=self.settings.max_duration_seconds,
        )
        now = self.clock.now()
        for key in self.api_keys.revoked():
            assert key.revoked_at is not None  # noqa: S101 - revoked() returns revoked keys only
            if key.revoked_at + span > now:
                self.revocations.apply(
                    Revocation("api_key", key.id, key.revoked_at, key.revoked_at + span, key.project)
                )

    async def _watch_key_file(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.revoke_keys_from_file()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.revocations.aclose()
        if self.leases is not None:
            await self.leases.aclose()
        if self.quota is not None:
            await self.quota.aclose()
        await self.skew.aclose()
        await self.replay.aclose()
        await self.keys.aclose()


def open_seal_keys(settings: Settings, *, clock: Clock) -> SealKeySource:
    """Load the seal keys; without any, warn: sealed tickets are then refused here (`unknown_key`).

    Raises:
        KeySetError: the seal key file exists but cannot be read.
    """
    source = SealKeySource(settings.seal_keys_path, clock=clock.now)
    keys = source.load()
    if not keys.keys:
        if settings.jwks_url:
            # A verify-only edge: `make keys` here would make keys of its own, which open nothing.
            advice = (
                "copy the minter's seal.json there (mode 0600), or point REALTIME_SEAL_KEYS_FILE "
                "at such a copy"
            )
        else:
            advice = (
                "run `make keys` on the minter, or point REALTIME_SEAL_KEYS_FILE at a copy of "
                "the minter's seal.json"
            )
        minting = settings.sealed_tickets and not settings.jwks_url
        logger.warning(
            "no seal keys at %s: sealed tickets are refused with unknown_key%s; %s",
            settings.seal_keys_path,
            " and the mint answers 503 tickets_disabled" if minting else "",
            advice,
        )
    return source


def open_revocations(settings: Settings, *, clock: Callable[[], float]) -> MemoryRevocations:
    """The revocations of this process (memory://) or of the fleet (redis://)."""
    if settings.replay_url == "memory://":
        return MemoryRevocations(clock=clock)
    return RedisRevocations(
        settings.replay_url,
        prefix=settings.replay_prefix,
        timeout=settings.replay_timeout_seconds,
        clock=clock,
    )


def open_quota(settings: Settings, *, clock: Callable[[], float]) -> Quota | None:
    """The daily audio quota, when one is set."""
    minutes = settings.project_audio_minutes_per_day
    if minutes is None:
        return None
    if settings.replay_url == "memory://":
        return MemoryQuota(minutes_per_day=minutes, clock=clock)
    return RedisQuota(
        settings.replay_url,
        prefix=settings.replay_prefix,
        minutes_per_day=minutes,
        timeout=settings.replay_timeout_seconds,
        clock=clock,
    )


def open_replay_store(settings: Settings, *, clock: Callable[[], float]) -> ReplayStore:
    """The store `REALTIME_REPLAY_URL` names."""
    if settings.replay_url == "memory://":
        return MemoryReplayStore(
            maxsize=settings.replay_memory_max, leeway=settings.leeway_seconds, clock=clock
        )
    return RedisReplayStore(
        settings.replay_url,
        prefix=settings.replay_prefix,
        leeway=settings.leeway_seconds,
        timeout=settings.replay_timeout_seconds,
        clock=clock,
        skew_margin=settings.clock_skew_margin_seconds,
    )
