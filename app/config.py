"""Settings: one frozen object, built once from `REALTIME_*` environment variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"must be a finite number of at least {minimum}, got {raw!r}")
        return value

    return parse


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _path(raw: str) -> Path:
    return Path(_text(raw))


def _optional_path(raw: str) -> Path | None:
    return Path(raw.strip()) if raw.strip() else None


def _url(*schemes: str) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        value = raw.strip()
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"expected a {' or '.join(schemes)} URL with a host, got {value!r}")
        return value

    return parse


def _required_url(*schemes: str) -> Callable[[str], str]:
    optional = _url(*schemes)

    def parse(raw: str) -> str:
        value = optional(raw)
        if value is None:
            raise ValueError("must not be empty")
        return value

    return parse


def _replay_url(raw: str) -> str:
    value = raw.strip()
    if value == "memory://":
        return value
    parts = urlsplit(value)
    if parts.scheme in {"redis", "rediss"} and parts.hostname:
        return value
    raise ValueError(f"expected memory:// or redis://host:port/db, got {value!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())


def _hosts(raw: str) -> tuple[str, ...]:
    """Comma-separated host names or IP literals (`[::1]` for IPv6), without ports, lower-cased."""
    items = tuple(item.strip().lower() for item in raw.split(",") if item.strip())
    for item in items:
        if not re.fullmatch(r"[a-z0-9_.\-]+|\[[0-9a-f:.]+\]", item):
            raise ValueError(f"expected host names or [IPv6] literals without ports, got {item!r}")
    return items


def _proxies(raw: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDRs (or `*` for any), each checked now."""
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"expected addresses or CIDRs separated by commas, got {item!r}") from None
    return items


def _optional_minutes(raw: str) -> float | None:
    return _float(0.0)(raw) if raw.strip() else None


def _optional_port(raw: str) -> int | None:
    if not raw.strip():
        return None
    port = _int(1)(raw)
    if port > 65535:
        raise ValueError(f"expected a port number up to 65535, got {port}")
    return port


def _setting(default: Any, parse: Callable[[str], Any], env: str) -> Any:
    """A settings field read from `REALTIME_<env>` with `parse`."""
    if isinstance(default, tuple | list | dict):
        return field(default_factory=lambda: default, metadata={"env": env, "parse": parse})
    return field(default=default, metadata={"env": env, "parse": parse})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the service. Tests build it directly; processes use `from_environ`."""

    keys_dir: Path = _setting(Path("keys"), _path, "KEYS_DIR")
    api_keys_file: Path | None = _setting(None, _optional_path, "API_KEYS_FILE")
    jwks_url: str | None = _setting(None, _url("http", "https"), "JWKS_URL")
    tickets_enabled: bool = _setting(True, _bool, "TICKETS_ENABLED")
    issuer: str = _setting("opper-realtime", _text, "ISSUER")
    audience: str = _setting("opper-realtime", _text, "AUDIENCE")
    leeway_seconds: int = _setting(5, _int(0), "LEEWAY_SECONDS")
    ticket_max_bytes: int = _setting(6144, _int(256), "TICKET_MAX_BYTES")
    retire_grace_seconds: int = _setting(60, _int(0), "RETIRE_GRACE_SECONDS")
    public_ws_url: str | None = _setting(None, _url("ws", "wss"), "PUBLIC_WS_URL")
    ws_url_enabled: bool = _setting(True, _bool, "WS_URL_ENABLED")
    allowed_hosts: tuple[str, ...] = _setting((), _hosts, "ALLOWED_HOSTS")
    replay_url: str = _setting("memory://", _replay_url, "REPLAY_URL")
    replay_prefix: str = _setting("realtime:jti:", _text, "REPLAY_PREFIX")
    replay_memory_max: int = _setting(100_000, _int(1), "REPLAY_MEMORY_MAX")
    replay_timeout_seconds: float = _setting(0.5, _float(0.001), "REPLAY_TIMEOUT_SECONDS")
    clock_skew_margin_seconds: int = _setting(30, _int(0), "CLOCK_SKEW_MARGIN_SECONDS")
    allowed_origins: tuple[str, ...] = _setting((), _origins, "ALLOWED_ORIGINS")
    max_sessions_per_project: int = _setting(0, _int(0), "MAX_SESSIONS_PER_PROJECT")
    start_timeout_seconds: float = _setting(10.0, _float(0.001), "START_TIMEOUT_SECONDS")
    idle_timeout_seconds: float = _setting(300.0, _float(0.001), "IDLE_TIMEOUT_SECONDS")
    max_duration_seconds: float = _setting(1800.0, _float(0.001), "MAX_DURATION_SECONDS")
    max_frame_bytes: int = _setting(1_048_576, _int(1024), "MAX_FRAME_BYTES")
    session_memory_bytes: int = _setting(8_388_608, _int(65_536), "SESSION_MEMORY_BYTES")
    max_frames_per_second: int = _setting(200, _int(1), "MAX_FRAMES_PER_SECOND")
    max_bytes_per_second: int = _setting(2_097_152, _int(1024), "MAX_BYTES_PER_SECOND")
    upstream: str = _setting("local", _choice("local", "relay", "providers"), "UPSTREAM")
    upstream_url: str | None = _setting(None, _url("ws", "wss"), "UPSTREAM_URL")
    upstream_api_key: str | None = _setting(None, _optional_text, "UPSTREAM_API_KEY")
    upstream_timeout_seconds: float = _setting(10.0, _float(0.001), "UPSTREAM_TIMEOUT_SECONDS")
    upstream_response_timeout_seconds: float = _setting(
        30.0, _float(0.001), "UPSTREAM_RESPONSE_TIMEOUT_SECONDS"
    )
    upstream_resumes: int = _setting(10, _int(0), "UPSTREAM_RESUMES")
    openai_api_key: str | None = _setting(None, _optional_text, "OPENAI_API_KEY")
    openai_url: str = _setting(OPENAI_URL, _required_url("ws", "wss"), "OPENAI_URL")
    xai_api_key: str | None = _setting(None, _optional_text, "XAI_API_KEY")
    xai_url: str = _setting(XAI_URL, _required_url("ws", "wss"), "XAI_URL")
    gemini_api_key: str | None = _setting(None, _optional_text, "GEMINI_API_KEY")
    gemini_url: str = _setting(GEMINI_URL, _required_url("ws", "wss"), "GEMINI_URL")
    jwks_refresh_interval_seconds: float = _setting(5.0, _float(0.0), "JWKS_REFRESH_INTERVAL_SECONDS")
    jwks_timeout_seconds: float = _setting(2.0, _float(0.001), "JWKS_TIMEOUT_SECONDS")
    key_publish_seconds: int = _setting(40, _int(0), "KEY_PUBLISH_SECONDS")
    edge_name: str | None = _setting(None, _optional_text, "EDGE_NAME")
    ws_compression: bool = _setting(False, _bool, "WS_COMPRESSION")
    handshake_timeout_seconds: float = _setting(10.0, _float(0.001), "HANDSHAKE_TIMEOUT_SECONDS")
    max_connections: int = _setting(10_000, _int(1), "MAX_CONNECTIONS")
    dev: bool = _setting(False, _bool, "DEV")
    sealed_tickets: bool = _setting(True, _bool, "SEALED_TICKETS")
    seal_keys_file: Path | None = _setting(None, _optional_path, "SEAL_KEYS_FILE")
    trusted_proxies: tuple[str, ...] = _setting(("127.0.0.1",), _proxies, "TRUSTED_PROXIES")
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
