"""The long-lived parts of one app instance, built in the lifespan and reached by handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.apikeys.store import ApiKeyStore
from app.clock import Clock
from app.config import Settings
from app.keysource import DirectoryKeySource, KeySource, SealKeySource
from app.metrics import Metrics
from app.models import ModelRegistry
from app.redisreplay import RedisReplayStore
from app.registry import SessionRegistry
from app.replay import MemoryReplayStore, ReplayStore
from app.skew import SkewWatch
from app.upstreams import make_upstream, served_registry
from app.upstreams.base import Upstream

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

    @classmethod
    async def open(cls, settings: Settings, *, clock: Clock, upstream: Upstream | None = None) -> Services:
        """Load keys, API keys and the model registry, and open the replay store.

        Raises:
            KeySetError: the key set (or the JWKS URL) cannot be loaded.
        """
        keys: KeySource
        if settings.jwks_url:
            from app.jwks import JwksKeySource

            keys = JwksKeySource(
                settings.jwks_url,
                timeout=settings.jwks_timeout_seconds,
                poll_interval=settings.jwks_refresh_interval_seconds,
                clock=time.monotonic,
            )
            await keys.start()
        else:
            directory = DirectoryKeySource(settings.keys_dir, clock=clock.now)
            directory.load()
            keys = directory
        seal_keys = open_seal_keys(settings, clock=clock)
        metrics = Metrics()
        metrics.watch_keys(keys.current)
        replay = open_replay_store(settings, clock=clock.now)
        for warning in await replay.setup_warnings():
            logger.warning("replay store: %s", warning)
        skew = SkewWatch(replay, leeway=settings.leeway_seconds, margin=settings.clock_skew_margin_seconds)
        await skew.start()
        metrics.replay_clock_offset.set_function(lambda: skew.offset or 0.0)
        return cls(
            settings=settings,
            clock=clock,
            metrics=metrics,
            registry=served_registry(settings, ModelRegistry.load()),
            keys=keys,
            api_keys=ApiKeyStore(settings.api_keys_path, clock=clock.now).load(),
            replay=replay,
            sessions=SessionRegistry(),
            upstream=upstream
            or make_upstream(settings, dropped=metrics.provider_event_dropped, resumed=metrics.resumption),
            seal_keys=seal_keys,
            skew=skew,
        )

    async def aclose(self) -> None:
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
        minting = settings.sealed_tickets and not settings.jwks_url
        logger.warning(
            "no seal keys at %s: sealed tickets are refused with unknown_key%s; "
            "run `make keys` or point REALTIME_SEAL_KEYS_FILE at a copy of the minter's seal.json",
            settings.seal_keys_path,
            " and the mint answers 503 tickets_disabled" if minting else "",
        )
    return source


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
