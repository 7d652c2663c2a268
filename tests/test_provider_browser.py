"""The demo page in Chromium against a fake OpenAI Realtime, through an edge in `providers` mode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.tickets.rotation import ensure_keys
from tests.browser import chromium
from tests.fake_providers import FakeProvider
from tests.servers import ServiceProcess

pytestmark = pytest.mark.browser

OPENAI_KEY = "sk-fake-browser-0123456789"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("openai", key=OPENAI_KEY) as provider:
        yield provider
    assert provider.violations == []


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[ServiceProcess]:
    tmp_path = tmp_path_factory.mktemp("provider-browser")
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    env = {
        "REALTIME_KEYS_DIR": str(keys_dir),
        "REALTIME_DEV": "true",
        "REALTIME_UPSTREAM": "providers",
        "REALTIME_OPENAI_API_KEY": OPENAI_KEY,
        "REALTIME_OPENAI_URL": fake.url,
    }
    with ServiceProcess(env=env, log_path=tmp_path / "edge.log") as process:
        yield process
    assert OPENAI_KEY not in process.log()


@pytest.fixture
def page(edge: ServiceProcess) -> Iterator[Any]:
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.goto(edge.url + "/")
        yield page
        context.close()


def test_demo_page_talks_to_the_provider(page: Any, fake: FakeProvider, tmp_path: Path) -> None:
    # Only the served model is offered: the other providers have no key here.
    page.wait_for_function("document.querySelectorAll('#model option').length === 1", timeout=10000)
    assert page.eval_on_selector_all("#model option", "options => options.map(o => o.value)") == [
        "openai/gpt-realtime-2"
    ]
    page.click("#connect")
    page.wait_for_function("window.demo.session !== null", timeout=15000)
    assert "answered by openai (the real provider)" in page.inner_text("#session")
    assert fake.openings and fake.openings[-1]["type"] == "realtime"

    page.fill("#text", "hello from Chromium")
    page.press("#text", "Enter")
    page.wait_for_function(
        "document.querySelector('#answer .model') && "
        "document.querySelector('#answer .model').textContent === 'echo: hello from Chromium'",
        timeout=15000,
    )
    assert fake.of_type("conversation.item.create")[-1]["item"]["content"][0]["text"] == "hello from Chromium"

    # The microphone streams PCM16 at 24 kHz to the provider; stopping commits the turn.
    page.click("#mic")
    page.wait_for_function("(window.demo.sentAudio || 0) > 4800", timeout=20000)
    page.click("#mic")
    page.wait_for_function("window.demo.events.some(e => e.event.type === 'speech.stopped')", timeout=15000)
    assert fake.of_type("input_audio_buffer.append") and fake.of_type("input_audio_buffer.commit")
