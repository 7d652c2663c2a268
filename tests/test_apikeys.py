"""API keys: hashed at rest, runtime vs management vs project-less, reload, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.apikeys import ApiKeyStore, bearer_token, create_key
from app.exceptions import InvalidCredentialsError, MissingCredentialsError


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    plain, entry = create_key(path, project="p1", kind="runtime", now=1)
    text = path.read_text()
    assert plain not in text and entry.digest in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert ApiKeyStore(path).load().check(plain).project == "p1"


@pytest.mark.parametrize(
    ("kind", "project", "message"),
    [
        ("management", "p1", "management keys"),
        ("runtime", None, "no project"),
    ],
    ids=["management-kind", "project-less"],
)
def test_stored_keys_that_cannot_mint(tmp_path: Path, kind: str, project: str | None, message: str) -> None:
    path = tmp_path / "api_keys.json"
    plain, _ = create_key(path, project=project, kind=kind, now=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidCredentialsError, match=message) as caught:
        ApiKeyStore(path).load().check(plain)
    assert caught.value.code == "invalid_credentials" and caught.value.status == 401


def test_management_kind_stored_as_runtime_prefix_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    plain, _ = create_key(path, project="p", kind="runtime", now=1)
    data = json.loads(path.read_text())
    data["keys"][0]["kind"] = "management"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidCredentialsError, match="management"):
        ApiKeyStore(path).load().check(plain)


@pytest.mark.parametrize(
    ("token", "message"),
    [("oprk-unknown", "not valid"), ("opmak-unknown", "management keys")],
    ids=["unknown", "unknown-opmak"],
)
def test_unknown_keys(tmp_path: Path, token: str, message: str) -> None:
    with pytest.raises(InvalidCredentialsError, match=message):
        ApiKeyStore(tmp_path / "none.json").load().check(token)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc", "abc"), ("bearer   abc  ", "abc"), ("BEARER abc", "abc")],
    ids=["plain", "spaces", "upper"],
)
def test_bearer_token_parsing(header: str, expected: str) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   ", "abc"])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(MissingCredentialsError) as caught:
        bearer_token(header)
    assert caught.value.code == "missing_credentials"


def test_store_picks_up_new_keys_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    now = [0.0]
    store = ApiKeyStore(path, clock=lambda: now[0]).load()
    plain, _ = create_key(path, project="p", kind="runtime", now=1)
    now[0] += 0.5
    assert store.check(plain).project == "p"


def test_label_replaces_the_previous_key(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    first, _ = create_key(path, project="dev", kind="runtime", now=1, label="make-run")
    second, _ = create_key(path, project="dev", kind="runtime", now=2, label="make-run")
    store = ApiKeyStore(path).load()
    assert store.check(second).project == "dev"
    with pytest.raises(InvalidCredentialsError):
        store.check(first)


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REALTIME_KEYS_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "app.apikeys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "create", "--project", "acme")
    assert result.returncode == 0
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("oprk-") and " " not in key
    assert ApiKeyStore(tmp_path / "api_keys.json").load().check(key).project == "acme"
    management = run_cli(tmp_path, "create", "--project", "acme", "--kind", "management")
    assert management.stdout.strip().splitlines()[-1].startswith("opmak-")


def test_cli_refuses_without_a_project(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "create")
    assert result.returncode == 2 and "PROJECT" in result.stderr
    assert not (tmp_path / "api_keys.json").exists()
