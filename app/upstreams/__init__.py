"""Upstreams a session talks to: `local` (built-in model), `relay` (a remote WebSocket), `providers`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.config import Settings
from app.session.models import ModelRegistry
from app.session.upstream import Upstream

logger = logging.getLogger(__name__)


def served_registry(settings: Settings, registry: ModelRegistry) -> ModelRegistry:
    """The models this deployment serves: with `providers`, those of providers that have a key."""
    if settings.upstream != "providers":
        return registry
    from app.upstreams.providers.adapter import endpoints

    configured = endpoints(settings)
    if not configured:
        logger.warning(
            "REALTIME_UPSTREAM=providers but no provider key is set "
            "(REALTIME_OPENAI_API_KEY, REALTIME_XAI_API_KEY, REALTIME_GEMINI_API_KEY): no model is served"
        )
    return registry.serving(lambda model: model.provider in configured)


def make_upstream(
    settings: Settings,
    *,
    dropped: Callable[[str, str], None] | None = None,
    resumed: Callable[[str], None] | None = None,
) -> Upstream:
    """The upstream `REALTIME_UPSTREAM` names; `dropped(provider, type)` counts untranslated events,
    `resumed(provider)` provider connections resumed within a session."""
    if settings.upstream == "providers":
        from app.upstreams.providers.adapter import ProvidersUpstream, endpoints

        return ProvidersUpstream(
            endpoints(settings),
            timeout=settings.upstream_timeout_seconds,
            dropped=dropped,
            response_timeout=settings.upstream_response_timeout_seconds,
            resumes=settings.upstream_resumes,
            resumed=resumed,
            memory_bytes=settings.session_memory_bytes,
        )
    if settings.upstream == "relay":
        from app.upstreams.relay import RelayUpstream

        assert settings.upstream_url is not None  # noqa: S101 - Settings refuses relay without a URL
        return RelayUpstream(
            settings.upstream_url,
            api_key=settings.upstream_api_key,
            timeout=settings.upstream_timeout_seconds,
        )
    from app.upstreams.local import LocalUpstream

    return LocalUpstream()
