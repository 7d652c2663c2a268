"""Upstreams a session talks to: `local` (built-in deterministic model) and `relay` (a remote WebSocket)."""

from __future__ import annotations

from app.config import Settings
from app.upstreams.base import Upstream


def make_upstream(settings: Settings) -> Upstream:
    """The upstream `REALTIME_UPSTREAM` names."""
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
