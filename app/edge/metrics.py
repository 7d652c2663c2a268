"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.session.usage import Usage
from app.tickets.keys import STATES, KeySet

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _KeyStates(Collector):
    """`realtime_signing_keys{state}`, read from the live key set at scrape time."""

    def __init__(self, keys: Callable[[], KeySet]) -> None:
        self._keys = keys

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "realtime_signing_keys", "Signing keys known to this process, by state", labels=["state"]
        )
        current = self._keys()
        for state in STATES:
            family.add_metric([state], len(current.in_state(state)))
        yield family


def _child(counter: Counter, cache: dict[str, Counter], code: str) -> Counter:
    child = cache.get(code)
    if child is None:
        child = cache[code] = counter.labels(code)
    return child


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._redemptions: dict[str, Counter] = {}
        self._mint_errors: dict[str, Counter] = {}
        self._dropped: dict[tuple[str, str], Counter] = {}
        self.tickets_minted = Counter(
            "realtime_tickets_minted",
            "Tickets minted",
            registry=self.registry,
        )
        self.mint_errors = Counter(
            "realtime_mint_errors",
            "Mint requests refused, by error code",
            ["code"],
            registry=self.registry,
        )
        self.redemptions = Counter(
            "realtime_redemptions",
            "WebSocket upgrade attempts by result code (`ok` for an accepted session)",
            ["code"],
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "realtime_active_sessions",
            "Sessions open in this process, by project",
            ["project"],
            registry=self.registry,
        )
        self._active: dict[str, Gauge] = {}
        self.session_duration = Histogram(
            "realtime_session_duration_seconds",
            "How long sessions lasted, from the accepted upgrade to the end, by provider",
            ["provider"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600),
            registry=self.registry,
        )
        self._durations: dict[str, Histogram] = {}
        self.session_ends = Counter(
            "realtime_session_ends",
            "Sessions ended, by end code (`client_gone` when the client closed or vanished)",
            ["code"],
            registry=self.registry,
        )
        self._ends: dict[str, Counter] = {}
        self.verify_seconds = Histogram(
            "realtime_verify_seconds",
            "Time to verify a ticket (signature and claims)",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=self.registry,
        )
        self.provider_events_dropped = Counter(
            "realtime_provider_events_dropped",
            "Provider events with no counterpart in the session protocol, dropped, by provider and type",
            ["provider", "type"],
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "realtime_audio_seconds",
            "Audio relayed, in seconds, by project, provider and direction (input: from the client)",
            ["project", "provider", "direction"],
            registry=self.registry,
        )
        self.provider_tokens = Counter(
            "realtime_provider_tokens",
            "Tokens the providers reported, by project, provider and direction",
            ["project", "provider", "direction"],
            registry=self.registry,
        )
        self.upstream_resumptions = Counter(
            "realtime_upstream_resumptions",
            "Provider connections resumed within a session (Gemini goAway or a resumable close)",
            ["provider"],
            registry=self.registry,
        )
        self.replay_clock_offset = Gauge(
            "realtime_replay_clock_offset_seconds",
            "The replay store's clock minus this process's, as last measured (0: memory:// or not yet)",
            registry=self.registry,
        )
        self.replay_store_errors = Counter(
            "realtime_replay_store_errors",
            "Replay store calls that failed (the redemption was refused: fail closed)",
            registry=self.registry,
        )

    def provider_event_dropped(self, provider: str, kind: str) -> None:
        """Count one provider event with no counterpart in this protocol (`kind` is a bounded set)."""
        child = self._dropped.get((provider, kind))
        if child is None:
            child = self._dropped[(provider, kind)] = self.provider_events_dropped.labels(provider, kind)
        child.inc()

    def session_usage(self, project: str, usage: Usage) -> None:
        """Add one ended session's usage (docs/operations.md, "Usage")."""
        for direction, seconds, tokens in (
            ("input", usage.input_audio_seconds, usage.input_tokens),
            ("output", usage.output_audio_seconds, usage.output_tokens),
        ):
            if seconds:
                self.audio_seconds.labels(project, usage.provider, direction).inc(seconds)
            if tokens:
                self.provider_tokens.labels(project, usage.provider, direction).inc(tokens)

    def resumption(self, provider: str) -> None:
        self.upstream_resumptions.labels(provider).inc()

    def redemption(self, code: str) -> Counter:
        """The redemption counter of `code` (children cached: `labels()` costs more than `inc()`)."""
        return _child(self.redemptions, self._redemptions, code)

    def session_opened(self, project: str) -> None:
        child = self._active.get(project)
        if child is None:
            child = self._active[project] = self.active_sessions.labels(project)
        child.inc()

    def session_closed(self, project: str, *, provider: str, code: str, seconds: float) -> None:
        """One session is over: the gauge, its end code and its length."""
        self._active[project].dec()
        _child(self.session_ends, self._ends, code).inc()
        histogram = self._durations.get(provider)
        if histogram is None:
            histogram = self._durations[provider] = self.session_duration.labels(provider)
        histogram.observe(seconds)

    def mint_error(self, code: str) -> Counter:
        return _child(self.mint_errors, self._mint_errors, code)

    def watch_keys(self, keys: Callable[[], KeySet]) -> None:
        """Export the key set's states; `keys` is called at each scrape."""
        self.registry.register(_KeyStates(keys))

    def render(self) -> bytes:
        return generate_latest(self.registry)
