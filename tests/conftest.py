"""Shared fixtures: a fake clock, a fresh key set, settings, API keys, the app and a client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from app.clock import FakeClock
from app.config import Settings
from app.tickets.apikeys import create_key
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys

START = 1_800_000_000.0
PROJECT = "proj_test"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    ensure_keys(directory, now=int(START) - 3600)
    return directory


@pytest.fixture
def keyset(keys_dir: Path) -> KeySet:
    return KeySet.load(keys_dir)


@pytest.fixture
def settings(keys_dir: Path) -> Settings:
    return Settings(keys_dir=keys_dir)


@pytest.fixture
def api_key(settings: Settings) -> str:
    plain, _ = create_key(settings.api_keys_path, project=PROJECT, kind="runtime", now=int(START))
    return plain


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> Starlette:
    from app.main import create_app

    return create_app(settings, clock=clock)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client
