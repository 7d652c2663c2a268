"""Settings: one frozen object, built once from `REALTIME_*` environment variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import settingkinds as kinds
from app.exceptions import SettingsError

PREFIX = "REALTIME_"
OPENAI_URL = "wss://api.openai.com/v1/realtime"
XAI_URL = "wss://api.x.ai/v1/realtime"
GEMINI_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
# Settings whose values are secrets: `repr(settings)` shows them as "***".
SECRETS = frozenset({"upstream_api_key", "openai_api_key", "xai_api_key", "gemini_api_key"})


# The kinds by the short names the fields below use (app/settingkinds.py).
_bool, _int, _float, _choice = kinds.boolean, kinds.integer, kinds.number, kinds.choice
_text, _optional_text, _path, _optional_path = (
    kinds.text,
    kinds.optional_text,
    kinds.path,
    kinds.optional_path,
)
_url, _required_url, _replay_url = kinds.url, kinds.required_url, kinds.replay_url
_origins, _proxies, _optional_port = kinds.origins, kinds.proxies, kinds.optional_port
_hosts, _optional_minutes = kinds.hosts, kinds.optional(kinds.number(0.0))


def _setting(default: Any, parse: Callable[[str], Any], env: str) -> Any:
    """A settings field read from `REALTIME_<env>` with `parse`, and checked by it (a `settingkinds.Kind`)."""
    if isinstance(default, tuple | list | dict):
        return field(default_factory=lambda: default, metadata={"env": env, "parse": parse})
    return field(default=default, metadata={"env": env, "parse": parse})


_SECONDS = _float(0.001)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the service, grouped by concern. Tests build it directly, processes use
    `from_environ`; either way every value is checked as it is built (`SettingsError`)."""

    # Keys and tickets: the key files, what a ticket says, how long keys stay published.
    keys_dir: Path = _setting(Path("keys"), _path, "KEYS_DIR")
    api_keys_file: Path | None = _setting(None, _optional_path, "API_KEYS_FILE")
    issuer: str = _setting("opper-realtime", _text, "ISSUER")
    audience: str = _setting("opper-realtime", _text, "AUDIENCE")
    leeway_seconds: int = _setting(5, _int(0), "LEEWAY_SECONDS")
    ticket_max_bytes: int = _setting(6144, _int(256), "TICKET_MAX_BYTES")
    sealed_tickets: bool = _setting(True, _bool, "SEALED_TICKETS")
    seal_keys_file: Path | None = _setting(None, _optional_path, "SEAL_KEYS_FILE")
    retire_grace_seconds: int = _setting(60, _int(0), "RETIRE_GRACE_SECONDS")
    key_publish_seconds: int = _setting(40, _int(0), "KEY_PUBLISH_SECONDS")
    jwks_url: str | None = _setting(None, _url("http", "https"), "JWKS_URL")
    jwks_refresh_interval_seconds: float = _setting(5.0, _float(0.0), "JWKS_REFRESH_INTERVAL_SECONDS")
    jwks_timeout_seconds: float = _setting(2.0, _SECONDS, "JWKS_TIMEOUT_SECONDS")

    # The mint: whether it issues tickets, and the `ws_url` it answers with.
    tickets_enabled: bool = _setting(True, _bool, "TICKETS_ENABLED")
    public_ws_url: str | None = _setting(None, _url("ws", "wss"), "PUBLIC_WS_URL")
    ws_url_enabled: bool = _setting(True, _bool, "WS_URL_ENABLED")
    allowed_hosts: tuple[str, ...] = _setting((), _hosts, "ALLOWED_HOSTS")
    dev: bool = _setting(False, _bool, "DEV")

    # The replay store, where single use is decided.
    replay_url: str = _setting("memory://", _replay_url, "REPLAY_URL")
    replay_prefix: str = _setting("realtime:jti:", _text, "REPLAY_PREFIX")
    replay_memory_max: int = _setting(100_000, _int(1), "REPLAY_MEMORY_MAX")
    replay_timeout_seconds: float = _setting(0.5, _SECONDS, "REPLAY_TIMEOUT_SECONDS")
    clock_skew_margin_seconds: int = _setting(30, _int(0), "CLOCK_SKEW_MARGIN_SECONDS")

    # The edge: which origins and proxies it believes, how many sessions a project may hold.
    allowed_origins: tuple[str, ...] = _setting((), _origins, "ALLOWED_ORIGINS")
    trusted_proxies: tuple[str, ...] = _setting(("127.0.0.1",), _proxies, "TRUSTED_PROXIES")
    max_sessions_per_project: int = _setting(0, _int(0), "MAX_SESSIONS_PER_PROJECT")
    edge_name: str | None = _setting(None, _optional_text, "EDGE_NAME")

    # A session's bounds: its deadlines, frame size, memory budget and the client's rate.
    start_timeout_seconds: float = _setting(10.0, _SECONDS, "START_TIMEOUT_SECONDS")
    idle_timeout_seconds: float = _setting(300.0, _SECONDS, "IDLE_TIMEOUT_SECONDS")
    max_duration_seconds: float = _setting(1800.0, _SECONDS, "MAX_DURATION_SECONDS")
    max_frame_bytes: int = _setting(1_048_576, _int(1024), "MAX_FRAME_BYTES")
    session_memory_bytes: int = _setting(8_388_608, _int(65_536), "SESSION_MEMORY_BYTES")
    max_frames_per_second: int = _setting(200, _int(1), "MAX_FRAMES_PER_SECOND")
    max_bytes_per_second: int = _setting(2_097_152, _int(1024), "MAX_BYTES_PER_SECOND")

    # The upstream a session talks to: the local model, a relay, or the model providers.
    upstream: str = _setting("local", _choice("local", "relay", "providers"), "UPSTREAM")
    upstream_url: str | None = _setting(None, _url("ws", "wss"), "UPSTREAM_URL")
    upstream_api_key: str | None = _setting(None, _optional_text, "UPSTREAM_API_KEY")
    upstream_timeout_seconds: float = _setting(10.0, _SECONDS, "UPSTREAM_TIMEOUT_SECONDS")
    upstream_response_timeout_seconds: float = _setting(30.0, _SECONDS, "UPSTREAM_RESPONSE_TIMEOUT_SECONDS")
    upstream_resumes: int = _setting(10, _int(0), "UPSTREAM_RESUMES")
    openai_api_key: str | None = _setting(None, _optional_text, "OPENAI_API_KEY")
    openai_url: str = _setting(OPENAI_URL, _required_url("ws", "wss"), "OPENAI_URL")
    xai_api_key: str | None = _setting(None, _optional_text, "XAI_API_KEY")
    xai_url: str = _setting(XAI_URL, _required_url("ws", "wss"), "XAI_URL")
    gemini_api_key: str | None = _setting(None, _optional_text, "GEMINI_API_KEY")
    gemini_url: str = _setting(GEMINI_URL, _required_url("ws", "wss"), "GEMINI_URL")

    # The server: connections and handshakes per process, compression, the admin listener.
    max_connections: int = _setting(10_000, _int(1), "MAX_CONNECTIONS")
    handshake_timeout_seconds: float = _setting(10.0, _SECONDS, "HANDSHAKE_TIMEOUT_SECONDS")
    ws_compression: bool = _setting(False, _bool, "WS_COMPRESSION")
    admin_port: int | None = _setting(None, _optional_port, "ADMIN_PORT")
    session_lease_seconds: float = _setting(15.0, _float(1.0), "SESSION_LEASE_SECONDS")
    project_audio_minutes_per_day: float | None = _setting(
        None, _optional_minutes, "PROJECT_AUDIO_MINUTES_PER_DAY"
    )
    log_format: str = _setting("text", _choice("text", "json"), "LOG_FORMAT")
    #: Whether `replay_url` is the default because REALTIME_REPLAY_URL was not set (`from_environ`
    #: only): a process that verifies other minters' tickets must then refuse to start. Not a setting.
    replay_url_defaulted: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        # Every value is checked here, not only when read from the environment: whoever builds
        # Settings gets the same bounds (docs/decisions.md, "Settings check themselves").
        for item in dataclasses.fields(self):
            check = getattr(item.metadata.get("parse"), "check", None)
            if check is None:
                continue  # a plain parser: its bounds hold for the environment only
            try:
                check(getattr(self, item.name))
            except ValueError as exc:
                raise SettingsError(PREFIX + item.metadata["env"], str(exc)) from None
        if self.upstream == "relay" and not self.upstream_url:
            raise SettingsError(PREFIX + "UPSTREAM_URL", "must be set when REALTIME_UPSTREAM is relay")

    def __repr__(self) -> str:
        shown = (
            f"{item.name}={'***' if item.name in SECRETS and value is not None else repr(value)}"
            for item in _settings_fields(type(self))
            for value in (getattr(self, item.name),)
        )
        return f"Settings({', '.join(shown)})"

    def secrets(self) -> tuple[str, ...]:
        """The configured secret values (provider and relay keys), for redaction by value."""
        return tuple(value for name in sorted(SECRETS) if (value := getattr(self, name)))

    @property
    def api_keys_path(self) -> Path:
        """Where the hashed API keys live: the setting, else `<keys dir>/api_keys.json`."""
        return self.api_keys_file or self.keys_dir / "api_keys.json"

    @property
    def seal_keys_path(self) -> Path:
        """Where the seal keys live: the setting, else `<keys dir>/seal.json`."""
        return self.seal_keys_file or self.keys_dir / "seal.json"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read every `REALTIME_*` variable; an invalid value raises `SettingsError` naming it."""
        values: dict[str, Any] = {"replay_url_defaulted": PREFIX + "REPLAY_URL" not in environ}
        for item in _settings_fields(cls):
            name = PREFIX + item.metadata["env"]
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[item.name] = item.metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(name, str(exc)) from None
        return cls(**values)

    @classmethod
    def variables(cls) -> list[tuple[str, Any]]:
        """Each environment variable with its default, for docs and `--help`."""
        rows = []
        for item in _settings_fields(cls):
            default = (
                item.default_factory()  # type: ignore[operator]
                if item.default is dataclasses.MISSING
                else item.default
            )
            rows.append((PREFIX + item.metadata["env"], default))
        return rows


def _settings_fields(cls: type[Settings]) -> list[dataclasses.Field[Any]]:
    """The fields read from the environment (each has its variable's name)."""
    return [item for item in dataclasses.fields(cls) if "env" in item.metadata]
