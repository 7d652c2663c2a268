"""One start command: what other servers get from `create_app()`, and the uvicorn the edge builds on."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets.exceptions
from websockets.sync.client import connect

from app.exceptions import SettingsError
from app.main import UNSUPPORTED_START
from app.server import internals
from app.upstreams import wsnames
from tests.servers import ROOT, terminate

FACTORY = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1"]


def _run_factory(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`uvicorn --factory app.main:create_app ARGS` with a usable key set; it must stop by itself."""
    env = {"PATH": "/usr/bin:/bin", "REALTIME_KEYS_DIR": str(tmp_path / "keys")}
    subprocess.run(
        [sys.executable, "-m", "app.keys", "init"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    return subprocess.run(
        [*FACTORY, "--port", "0", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_uvicorn_factory_refuses_to_start_and_names_the_supported_command(tmp_path: Path) -> None:
    result = _run_factory(tmp_path)
    assert result.returncode == 3  # uvicorn's exit status for a failed application start-up
    assert UNSUPPORTED_START in result.stderr
    assert "python -m app.serve" in result.stderr
    assert "Application startup complete" not in result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorn_factory_with_workers_stops_instead_of_serving_per_process(tmp_path: Path) -> None:
    # Two workers on the memory store would each accept the same ticket once: neither may serve.
    result = _run_factory(tmp_path, "--workers", "2")
    assert "failed to start, stopping the parent process" in result.stderr
    assert result.stderr.count(UNSUPPORTED_START) >= 1
    assert "Application startup complete" not in result.stderr


def test_uvicorn_factory_without_lifespan_answers_nothing_but_503(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "REALTIME_KEYS_DIR": str(tmp_path / "keys")}
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*FACTORY, "--port", "0", "--lifespan", "off"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        port = _wait_for_port(log, process)
        response = httpx.post(f"http://127.0.0.1:{port}/v3/realtime-sessions", json={}, timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unsupported_server"
        assert "python -m app.serve" in response.json()["error"]["message"]
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/v3/realtime", subprotocols=["opper-ticket.x"], open_timeout=10)  # type: ignore[list-item]
        assert refused.value.response.status_code == 503
    finally:
        terminate(process, timeout=10)


def _wait_for_port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return int(found.group(1))
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"uvicorn did not start: {log.read_text()}")


# The uvicorn internals ---------------------------------------------------------------------------


def test_the_installed_uvicorn_has_every_name_the_edge_uses() -> None:
    assert internals.problems() == []
    internals.check()


def test_pyproject_pins_the_range_the_check_supports() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"uvicorn[standard]{internals.SUPPORTED}"' in pyproject


@pytest.mark.parametrize("release", ["0.54.9", "0.56.0", "1.0.0"])
def test_another_uvicorn_release_is_refused_with_the_supported_range(release: str) -> None:
    found = internals.problems(release)
    assert found == [f"uvicorn {release} is installed; the edge supports uvicorn{internals.SUPPORTED}"]


def test_a_lost_method_or_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    monkeypatch.setitem(
        internals.METHODS,
        WebSocketsSansIOProtocol,
        (*internals.METHODS[WebSocketsSansIOProtocol], "gone_method"),
    )
    monkeypatch.setitem(
        internals.ATTRIBUTES,
        WebSocketsSansIOProtocol,
        (*internals.ATTRIBUTES[WebSocketsSansIOProtocol], "gone_attribute"),
    )
    assert internals.problems() == [
        "WebSocketsSansIOProtocol.gone_method() is gone",
        "WebSocketsSansIOProtocol.gone_attribute is gone",
    ]
    with pytest.raises(SettingsError, match=re.escape(f"uvicorn{internals.SUPPORTED}")):
        internals.check()


def test_app_serve_refuses_an_unsupported_uvicorn(tmp_path: Path) -> None:
    # A stand-in `uvicorn` distribution of another release, found first on the path: refused at start.
    dist = tmp_path / "site" / "uvicorn-0.99.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uvicorn\nVersion: 0.99.0\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path / "site"),
        "REALTIME_KEYS_DIR": str(tmp_path / "k"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"the edge supports uvicorn{internals.SUPPORTED}" in result.stderr


@pytest.mark.parametrize("release", ["16.0", "18.0", "20.1"])
def test_another_websockets_release_is_refused_with_the_supported_range(release: str) -> None:
    assert wsnames.problems(release) == [
        f"websockets {release} is installed; the provider link supports websockets{wsnames.SUPPORTED}"
    ]


def test_a_lost_websockets_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wsnames.problems() == []
    monkeypatch.setattr(wsnames, "ATTRIBUTES", (*wsnames.ATTRIBUTES, "gone_attribute"))
    assert wsnames.problems() == ["ClientConnection.gone_attribute is gone"]
    with pytest.raises(SettingsError, match=re.escape(f"websockets{wsnames.SUPPORTED}")):
        wsnames.check()
