"""Settings: defaults, every variable parsed, and invalid values named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.exceptions import SettingsError


def test_defaults_match_the_spec() -> None:
    settings = Settings.from_environ({})
    assert settings.keys_dir == Path("keys")
    assert settings.api_keys_path == Path("keys/api_keys.json")
    assert settings.issuer == settings.audience == "opper-realtime"
    assert settings.leeway_seconds == 5 and settings.ticket_max_bytes == 6144
    assert settings.replay_url == "memory://" and settings.replay_memory_max == 100_000
    assert settings.max_frame_bytes == 1_048_576 and settings.upstream == "local"
    assert settings.tickets_enabled and settings.ws_url_enabled and not settings.dev
    assert not settings.ws_compression
    assert settings.handshake_timeout_seconds == 10 and settings.max_connections == 10_000
    assert settings.session_memory_bytes == 8_388_608
    assert (settings.max_frames_per_second, settings.max_bytes_per_second) == (200, 2_097_152)


def test_variables_are_parsed() -> None:
    settings = Settings.from_environ(
        {
            "REALTIME_KEYS_DIR": "/tmp/k",
            "REALTIME_TICKETS_ENABLED": "false",
            "REALTIME_ALLOWED_ORIGINS": "https://a.example, https://b.example/",
            "REALTIME_REPLAY_URL": "redis://127.0.0.1:6379/0",
            "REALTIME_PUBLIC_WS_URL": "wss://rt.example/v3/realtime",
            "REALTIME_START_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert settings.api_keys_path == Path("/tmp/k/api_keys.json")
    assert not settings.tickets_enabled
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.start_timeout_seconds == 2.5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REALTIME_LEEWAY_SECONDS", "five"),
        ("REALTIME_LEEWAY_SECONDS", "-1"),
        ("REALTIME_TICKETS_ENABLED", "maybe"),
        ("REALTIME_REPLAY_URL", "postgres://x"),
        ("REALTIME_PUBLIC_WS_URL", "http://not-ws"),
        ("REALTIME_UPSTREAM", "carrier-pigeon"),
        ("REALTIME_IDLE_TIMEOUT_SECONDS", "nan"),
        ("REALTIME_ISSUER", "  "),
        ("REALTIME_WS_COMPRESSION", "deflate"),
        ("REALTIME_HANDSHAKE_TIMEOUT_SECONDS", "0"),
        ("REALTIME_HANDSHAKE_TIMEOUT_SECONDS", "inf"),
        ("REALTIME_MAX_CONNECTIONS", "0"),
        ("REALTIME_MAX_CONNECTIONS", "lots"),
        ("REALTIME_SESSION_MEMORY_BYTES", "1000"),
        ("REALTIME_MAX_FRAMES_PER_SECOND", "0"),
        ("REALTIME_MAX_BYTES_PER_SECOND", "fast"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_environ({variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"max_frames_per_second": 0}, "REALTIME_MAX_FRAMES_PER_SECOND"),
        ({"max_bytes_per_second": 10}, "REALTIME_MAX_BYTES_PER_SECOND"),
        ({"idle_timeout_seconds": float("nan")}, "REALTIME_IDLE_TIMEOUT_SECONDS"),
        ({"leeway_seconds": True}, "REALTIME_LEEWAY_SECONDS"),
        ({"issuer": " "}, "REALTIME_ISSUER"),
        ({"replay_url": "postgres://x"}, "REALTIME_REPLAY_URL"),
        ({"upstream": "carrier-pigeon"}, "REALTIME_UPSTREAM"),
        ({"trusted_proxies": ("not-an-address",)}, "REALTIME_TRUSTED_PROXIES"),
        ({"admin_port": 70_000}, "REALTIME_ADMIN_PORT"),
        ({"keys_dir": "keys"}, "REALTIME_KEYS_DIR"),
    ],
    ids=[
        "frames-0",
        "bytes-10",
        "idle-nan",
        "leeway-bool",
        "issuer-blank",
        "replay",
        "upstream",
        "proxy",
        "port",
        "str-path",
    ],
)
def test_settings_built_in_code_are_checked_too(values: dict[str, object], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_relay_needs_a_url() -> None:
    with pytest.raises(SettingsError, match="REALTIME_UPSTREAM_URL"):
        Settings.from_environ({"REALTIME_UPSTREAM": "relay"})


def test_serve_stops_at_start_up_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.serve", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "REALTIME_MAX_FRAME_BYTES": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 2
    assert "REALTIME_MAX_FRAME_BYTES" in result.stderr and "Traceback" not in result.stderr


def test_every_variable_is_in_the_settings_table() -> None:
    page = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    table = page.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    missing = [name for name, _ in Settings.variables() if f"`{name}`" not in table]
    assert missing == []
