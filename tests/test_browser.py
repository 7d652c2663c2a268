"""The product in a real browser: Debian's Chromium, driven by Playwright, against a real uvicorn."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.tickets.rotation import ensure_keys
from tests.browser import chromium
from tests.servers import ServiceProcess

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# The seed's one-liner, run in the page: mint server-side (dev route), then
# `new WebSocket(url, ["opper-ticket." + secret])`, start, ask, and collect what comes back.
SNIPPET = """
async ({ question, reuse }) => {
  const minted = await (await fetch("/dev/ticket", { method: "POST" })).json();
  const clientSecret = reuse || minted.client_secret;
  const url = "ws://" + location.host + "/v3/realtime";
  return await new Promise((resolve) => {
    const events = [];
    let opened = false;
    const ws = new WebSocket(url, [`opper-ticket.${clientSecret}`]);
    const done = (extra) =>
      resolve({ opened, protocol: ws.protocol, events, ticket: clientSecret, ...extra });
    setTimeout(() => done({ timeout: true }), 15000);
    ws.onopen = () => { opened = true; ws.send(JSON.stringify({ type: "session.start", config: {} })); };
    ws.onclose = (close) => done({ closeCode: close.code });
    ws.onmessage = (message) => {
      const event = JSON.parse(message.data);
      events.push(event);
      if (event.type === "session.started") {
        ws.send(JSON.stringify({ type: "text.input", text: question }));
        ws.send(JSON.stringify({ type: "response.create" }));
      }
      if (event.type === "response.completed") ws.close(1000);
    };
  });
}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp_path = tmp_path_factory.mktemp("browser")
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    with ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir), "REALTIME_DEV": "true"}, log_path=tmp_path / "service.log"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, service: ServiceProcess) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.goto(service.url + "/")
    yield page
    context.close()


def replayed_count(service: ServiceProcess) -> float:
    text = httpx.get(service.url + "/metrics", timeout=10).text
    match = re.search(r'^realtime_redemptions_total\{code="ticket_replayed"\} ([0-9.]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_seed_snippet_connects_and_streams_an_answer(page: Any) -> None:
    result = page.evaluate(SNIPPET, {"question": "what is a ticket?", "reuse": None})
    assert result["opened"], result
    # Chromium accepted the answer, which names the offered ticket protocol.
    assert result["protocol"] == "opper-ticket." + result["ticket"]
    types = [event["type"] for event in result["events"]]
    assert types[0] == "session.started"
    assert result["events"][0]["input_sample_rate"] == 24000
    assert "response.started" in types and types[-1] == "response.completed"
    answer = "".join(event["delta"] for event in result["events"] if event["type"] == "text.delta")
    assert "what is a ticket?" in answer


def test_reused_ticket_never_opens_and_is_counted(page: Any, service: ServiceProcess) -> None:
    first = page.evaluate(SNIPPET, {"question": "first", "reuse": None})
    assert first["opened"]
    before = replayed_count(service)
    second = page.evaluate(SNIPPET, {"question": "again", "reuse": first["ticket"]})
    assert not second["opened"] and second["events"] == []
    assert second["closeCode"] == 1006  # the handshake failed: the socket never opened
    assert replayed_count(service) == before + 1


def test_demo_page_conversation_microphone_and_screenshot(page: Any) -> None:
    page.click("#connect")
    page.wait_for_function("window.demo.session !== null", timeout=15000)
    assert "openai/gpt-realtime-2" in page.inner_text("#session")
    # The page says plainly which upstream answers: here the built-in test model.
    assert "answered by the built-in test model" in page.inner_text("#session")
    page.fill("#text", "hello from Chromium")
    page.press("#text", "Enter")
    page.wait_for_function(
        "document.querySelector('#answer .model') && "
        "document.querySelector('#answer .model').textContent.includes('hello from Chromium') && "
        "window.demo.events.some(e => e.event.type === 'response.completed')",
        timeout=15000,
    )
    # Chromium's fake microphone beeps: the energy detector hears speech, then silence, then answers.
    page.click("#mic")
    page.wait_for_function("window.demo.events.some(e => e.event.type === 'speech.started')", timeout=20000)
    page.click("#mic")  # stop: the page commits the turn it has sent
    page.wait_for_function(
        "(() => { const i = window.demo.events.findIndex(e => e.event.type === 'speech.stopped');"
        " return i >= 0 && window.demo.events.slice(i).some(e => e.event.type === 'audio.delta'); })()",
        timeout=20000,
    )
    assert page.evaluate("window.demo.sentAudio") > 0
    assert page.evaluate("window.demo.played") > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
    assert (ARTIFACTS / "demo.png").stat().st_size > 10_000
