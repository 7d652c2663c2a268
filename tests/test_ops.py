"""What operators see: health, readiness, metrics, the model list, the demo page and its dev route."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.clock import FakeClock
from app.config import Settings
from app.main import create_app
from app.ops.processes import free_port
from app.server.runner import YOUNG_GC_THRESHOLD, tune_gc
from tests.conftest import PROJECT

METRICS = (
    "realtime_tickets_minted_total",
    "realtime_mint_errors_total",
    "realtime_redemptions_total",
    "realtime_active_sessions",
    "realtime_verify_seconds_bucket",
    "realtime_replay_store_errors_total",
    "realtime_replay_clock_offset_seconds",
    "realtime_signing_keys",
    "realtime_session_duration_seconds",
    "realtime_session_ends_total",
)


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_ok_with_keys_and_memory_store(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_names_an_unreachable_replay_store(keys_dir: Path, clock: FakeClock) -> None:
    settings = Settings(keys_dir=keys_dir, replay_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings, clock=clock)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert any(reason.startswith("replay store:") for reason in body["reasons"])


def test_metrics_exports_every_family_and_counts(client: TestClient, api_key: str) -> None:
    before = client.get("/metrics").text
    for name in METRICS:
        assert name in before, name
    assert metric(before, "realtime_signing_keys", '{state="active"}') == 1
    assert metric(before, "realtime_signing_keys", '{state="next"}') == 1
    minted = client.post("/v3/realtime-sessions", headers={"Authorization": f"Bearer {api_key}"}, json={})
    client.post("/v3/realtime-sessions", json={})
    ticket = minted.json()["client_secret"]
    with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{ticket}"]) as ws:
        ws.send_json({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}})
        assert ws.receive_json()["type"] == "session.started"
        during = client.get("/metrics").text
        assert metric(during, "realtime_active_sessions", f'{{project="{PROJECT}"}}') == 1
    after = client.get("/metrics").text
    assert (
        metric(after, "realtime_tickets_minted_total") == metric(before, "realtime_tickets_minted_total") + 1
    )
    assert metric(after, "realtime_mint_errors_total", '{code="missing_credentials"}') == 1
    assert metric(after, "realtime_redemptions_total", '{code="ok"}') == 1
    assert metric(after, "realtime_verify_seconds_count") == 1
    assert metric(after, "realtime_active_sessions", f'{{project="{PROJECT}"}}') == 0
    assert metric(after, "realtime_session_ends_total", '{code="client_gone"}') == 1
    assert metric(after, "realtime_session_duration_seconds_count", '{provider="local"}') == 1


def test_models_lists_the_realtime_registry(client: TestClient) -> None:
    models = {model["id"]: model for model in client.get("/v3/models?type=realtime").json()["data"]}
    assert set(models) == {
        "openai/gpt-realtime-2",
        "xai/grok-voice-latest",
        "gemini/gemini-3.1-flash-live-preview",
        "gemini/gemini-3.5-live-translate-preview",
    }
    gemini = models["gemini/gemini-3.1-flash-live-preview"]
    assert (gemini["input_sample_rate"], gemini["output_sample_rate"]) == (16000, 24000)
    assert "ara" in models["xai/grok-voice-latest"]["voices"]


def test_demo_page_uses_the_ticket_subprotocol(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    script = client.get("/static/demo.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    # The page is the browser client package plus a getTicket that mints through the dev route.
    assert '({ RealtimeSession } = await import("/client/index.js"));' in script.text
    assert "new RealtimeSession({ url: wsUrl(), getTicket, config: {} })" in script.text
    assert 'fetch("/dev/ticket?model="' in script.text
    assert client.get("/static/../config.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404
    # Outside dev mode the package is not served (as the dev route, which the page needs anyway).
    assert client.get("/client/index.js").status_code == 404


def test_dev_mode_serves_the_browser_client_package(keys_dir: Path) -> None:
    app = create_app(Settings(keys_dir=keys_dir, dev=True))
    with TestClient(app) as client:
        module = client.get("/client/index.js")
        assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
        assert "new WebSocket(this.url, [SESSION_PROTOCOL, TICKET_PROTOCOL + ticket])" in module.text
        assert 'this._send({ type: "session.start", config: this.config })' in module.text
        for name in ("pcm.js", "policy.js", "worklet.js"):
            assert client.get(f"/client/{name}").status_code == 200
        for name in ("package.json", "index.d.ts", "README.md", "test", "../../app/main.py", "nothing.js"):
            response = client.get("/client/" + name)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_dev_ticket_route_is_off_unless_dev(client: TestClient) -> None:
    response = client.post("/dev/ticket")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("model", ["openai/gpt-realtime-2", "gemini/gemini-3.1-flash-live-preview"])
def test_dev_ticket_route_mints_for_the_demo(keys_dir: Path, clock: FakeClock, model: str) -> None:
    app = create_app(Settings(keys_dir=keys_dir, dev=True), clock=clock)
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000)) as client:
        response = client.post(f"/dev/ticket?model={model}")
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
        ticket = response.json()["client_secret"]
        with client.websocket_connect("/v3/realtime", subprotocols=[f"opper-ticket.{ticket}"]) as ws:
            ws.send_json({"type": "session.start", "config": {}})
            started = ws.receive_json()
        assert started["type"] == "session.started" and started["model"] == model
        assert client.post("/dev/ticket?model=nope/nope").json()["error"]["code"] == "unknown_model"


def test_the_server_process_freezes_start_up_objects_and_collects_young_ones_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 10_000  # modules, schemas and the app, never scanned again
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
