"""What a process refuses to start with, on real processes: single use that would silently hold per
process only, and secret key files open to group or others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.config import Settings
from app.edge.preflight import check_single_use
from app.exceptions import SettingsError
from app.tickets.apikeys import create_key
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE
from tests.servers import ROOT, ServiceProcess

PROJECT = "proj_refusals"
START_TIMEOUT = 60


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m app.serve` that is expected to refuse: its exit status and output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    return subprocess.run(
        [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )


class Minter:
    def __init__(self, keys_dir: Path, service: ServiceProcess, api_key: str) -> None:
        self.keys_dir, self.service, self.api_key = keys_dir, service, api_key

    def mint(self) -> str:
        response = httpx.post(
            self.service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {self.api_key}"},
            json={},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["client_secret"]
        return token


@pytest.fixture(scope="module")
def minter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Minter]:
    tmp = tmp_path_factory.mktemp("minter")
    keys_dir = tmp / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys_dir)}, log_path=tmp / "minter.log") as service:
        yield Minter(keys_dir, service, api_key)


def edge_env(tmp_path: Path, minter: Minter) -> dict[str, str]:
    return {
        "REALTIME_KEYS_DIR": str(tmp_path / "no-keys-here"),
        "REALTIME_JWKS_URL": minter.service.url + "/.well-known/jwks.json",
        "REALTIME_SEAL_KEYS_FILE": str(minter.keys_dir / SEAL_FILE),
    }


def redeem(url: str, ticket: str) -> str:
    try:
        with connect(url, subprotocols=[Subprotocol("opper-ticket." + ticket)], open_timeout=10):
            return "upgraded"
    except InvalidStatus as exc:
        code: str = json.loads(exc.response.body or b"{}")["error"]["code"]
        return code


def test_a_jwks_edge_on_the_default_memory_store_refuses_to_start(tmp_path: Path, minter: Minter) -> None:
    """Before: it started without a word, and one ticket was accepted on it and again on the minter."""
    done = serve(edge_env(tmp_path, minter))
    assert done.returncode == 2, done.stderr
    assert "REALTIME_REPLAY_URL" in done.stderr and "redis://" in done.stderr
    assert "REALTIME_REPLAY_URL=memory://" in done.stderr  # how to accept it knowingly
    assert "Uvicorn running" not in done.stderr and "Traceback" not in done.stderr


def test_asked_for_by_name_it_starts_with_one_warning_and_single_use_per_process(
    tmp_path: Path, minter: Minter
) -> None:
    env = {**edge_env(tmp_path, minter), "REALTIME_REPLAY_URL": "memory://"}
    with ServiceProcess(env=env, log_path=tmp_path / "edge.log") as edge:
        warnings = [line for line in edge.log().splitlines() if " WARNING " in line]
        assert len(warnings) == 1, warnings
        assert "single use holds per process only" in warnings[0]
        # What the operator accepted: the same ticket once here and once on the minter.
        edge.wait_out_start_window()
        ticket = minter.mint()
        assert redeem(edge.ws_url, ticket) == "upgraded"
        assert redeem(edge.ws_url, ticket) == "ticket_replayed"
        assert redeem(minter.service.ws_url, ticket) == "upgraded"


def test_a_keys_directory_without_an_active_private_key_counts_as_verifying_others() -> None:
    defaulted = Settings(replay_url_defaulted=True)
    with pytest.raises(SettingsError) as caught:
        check_single_use(defaulted, KeySet.empty())
    assert caught.value.variable == "REALTIME_REPLAY_URL"
    assert check_single_use(Settings(), KeySet.empty()) is True  # named: allowed, and warned about
    with pytest.raises(SettingsError):
        check_single_use(
            Settings(jwks_url="http://minter/.well-known/jwks.json", replay_url_defaulted=True),
            KeySet.empty(),
        )
    assert (
        check_single_use(
            Settings(replay_url="redis://127.0.0.1:6379/0", replay_url_defaulted=False), KeySet.empty()
        )
        is False
    )


def test_the_minter_itself_starts_on_the_default_store(minter: Minter) -> None:
    log = minter.service.log()
    assert "single use holds per process only" not in log
    assert redeem(minter.service.ws_url, minter.mint()) == "upgraded"


@pytest.mark.parametrize("which", ["private key", "seal.json"])
def test_secret_key_files_open_to_others_are_refused(tmp_path: Path, which: str) -> None:
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    signer = KeySet.load(keys_dir).signer
    assert signer is not None
    path = keys_dir / (f"{signer.kid}.pem" if which == "private key" else SEAL_FILE)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)  # before: the service started without a word
    done = serve({"REALTIME_KEYS_DIR": str(keys_dir)})
    assert done.returncode == 1, done.stderr
    assert str(path) in done.stderr and f"chmod 600 {path}" in done.stderr
    assert "Uvicorn running" not in done.stderr
    path.chmod(0o640)  # group-readable is refused too
    assert serve({"REALTIME_KEYS_DIR": str(keys_dir)}).returncode == 1
    path.chmod(0o600)
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys_dir)}, log_path=tmp_path / "ok.log") as service:
        assert httpx.get(service.url + "/healthz", timeout=10).status_code == 200


def test_help_lists_every_setting_with_its_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines() if line.startswith("  REALTIME_"))
    assert set(rows) == {name for name, _ in Settings.variables()}
    assert rows["REALTIME_REPLAY_URL"].strip() == "memory://"
    assert rows["REALTIME_LEEWAY_SECONDS"].strip() == "5"
    assert rows["REALTIME_JWKS_URL"].strip() == "unset"
    assert rows["REALTIME_LOG_FORMAT"].strip() == "text"
    assert rows["REALTIME_SEAL_KEYS_FILE"].strip() == "<keys dir>/seal.json"
    assert rows["REALTIME_TRUSTED_PROXIES"].strip() == "127.0.0.1"
