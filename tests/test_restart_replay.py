"""A `memory://` store forgets on restart: no ticket minted before a restart redeems after it.

Real processes: the service is killed (SIGKILL, SIGTERM) and started again on the same keys, round
after round, and a used ticket is presented again; a second minter runs with its clock ahead
(`faketime`, within the leeway) so its tickets carry an `iat` later than the edge's own clock.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.servers import ServiceProcess, faketime

PROJECT = "proj_restart"
ROUNDS = 10
AHEAD = "+3s"
LEEWAY = 5  # the minter's clock: inside the default leeway of 5 s


def mint(service: ServiceProcess, api_key: str) -> str:
    response = httpx.post(
        service.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"ttl_seconds": 120},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["client_secret"]
    return token


def redeem(service: ServiceProcess, ticket: str) -> str:
    """`upgraded`, or the refusal's error code."""
    try:
        with connect(service.ws_url, subprotocols=[Subprotocol("opper-ticket." + ticket)], open_timeout=10):
            return "upgraded"
    except InvalidStatus as exc:
        code: str = json.loads(exc.response.body or b"{}")["error"]["code"]
        return code


def keyring(tmp_path: Path) -> tuple[Path, str]:
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 3600)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    return keys_dir, api_key


def restart_rounds(
    tmp_path: Path,
    keys: tuple[Path, str],
    stop: Callable[[ServiceProcess], None],
    minter: Callable[[], str] | None,
) -> list[str]:
    """Per round: a ticket used on the edge, the edge stopped with `stop` and started again, the
    ticket presented again. Returns what each second presentation got."""
    keys_dir, api_key = keys
    env = {"REALTIME_KEYS_DIR": str(keys_dir), "REALTIME_REPLAY_URL": "memory://"}
    answers = []
    service = ServiceProcess(env=env, log_path=tmp_path / "edge.log").start()
    try:
        for _ in range(ROUNDS):
            if minter is not None:
                # Another minter's tickets are refused for the edge's first leeway + 1 seconds.
                service.wait_out_start_window(LEEWAY)
            ticket = minter() if minter is not None else mint(service, api_key)
            assert redeem(service, ticket) == "upgraded"
            stop(service)
            service = ServiceProcess(env=env, log_path=tmp_path / "edge.log").start()
            answers.append(redeem(service, ticket))
        # The restarted process's own tickets redeem at once, inside the window it refuses others in.
        assert redeem(service, mint(service, api_key)) == "upgraded"
    finally:
        service.stop()
    return answers


def kill(service: ServiceProcess) -> None:
    service.signal(signal.SIGKILL)
    service.wait(timeout=10)


def term(service: ServiceProcess) -> None:
    service.signal(signal.SIGTERM)
    service.wait(timeout=30)


@pytest.mark.parametrize("stop", [kill, term], ids=["sigkill", "sigterm"])
def test_a_used_ticket_never_redeems_after_a_restart(
    tmp_path: Path, stop: Callable[[ServiceProcess], None]
) -> None:
    answers = restart_rounds(tmp_path, keyring(tmp_path), stop, None)
    replays = answers.count("upgraded")
    print(f"restart replays after {stop.__name__}: {replays} of {ROUNDS}")
    assert replays == 0, answers
    assert set(answers) == {"ticket_not_redeemable"}


def test_a_minter_clock_ahead_within_the_leeway_gets_no_replay_after_a_restart(tmp_path: Path) -> None:
    keys_dir, api_key = keyring(tmp_path)
    env = {"REALTIME_KEYS_DIR": str(keys_dir), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with ServiceProcess(env=env, log_path=tmp_path / "minter.log", wrapper=faketime(AHEAD)) as ahead:
        answers = restart_rounds(tmp_path, (keys_dir, api_key), kill, lambda: mint(ahead, api_key))
    replays = answers.count("upgraded")
    print(f"restart replays with the minter's clock {AHEAD}: {replays} of {ROUNDS}")
    assert replays == 0, answers
