"""The browser client package (clients/js) in Debian's Chromium against a real service process.

Pages load from the service's own origin, import the package from `/client/` (dev mode) and mint
through the dev route, as an app's page would through its backend. Reconnection is tested through a
TCP proxy in front of the service: dropping its connections is what a network change does to a
browser, and pointing it at a second service is an edge restart behind one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.tickets.apikeys import create_key
from app.tickets.base64url import b64url
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from tests.browser import chromium
from tests.servers import ROOT, ServiceProcess, terminate

pytestmark = pytest.mark.browser

DEADLINE_MS = 30_000

# Installs `window.t`: a RealtimeSession with every event it reports recorded.
SETUP = """
async ({ model, config, options, ticket, first, bad }) => {
  const { RealtimeSession } = await import("/client/index.js");
  const mint = async () => {
    const response = await fetch("/dev/ticket?model=" + encodeURIComponent(model), { method: "POST" });
    if (!response.ok) throw new Error("mint answered " + response.status);
    return response.json();
  };
  const t = (window.t = { events: [], sent: [], reconnecting: [], statuses: [], close: null, tickets: 0 });
  t.getTicket = async () => {
    t.tickets += 1;
    if (bad) return "not.a.ticket" + t.tickets; // a fresh one each time, which the edge refuses
    if (first !== null && t.tickets === 1) return first;
    return ticket === null ? mint() : ticket;
  };
  t.session = new RealtimeSession({
    url: "ws://" + location.host + "/v3/realtime", getTicket: t.getTicket, config, ...options,
  });
  t.session.on("event", (event) => t.events.push(event));
  t.session.on("sent", (event) => t.sent.push(event));
  t.session.on("reconnecting", (event) => t.reconnecting.push(event));
  t.session.on("status", (event) => t.statuses.push(event.status));
  t.session.on("interrupted", () => t.events.push({ type: "(interrupted)" }));
  t.session.on("close", (event) => (t.close = event));
  t.connected = t.session.connect().then(
    (started) => ({ started }),
    (error) => ({ name: error.name, code: error.code, message: error.message }),
  );
  return true;
}
"""

# The answer text of the last completed response, and its status.
LAST_ANSWER = """
() => {
  const events = window.t.events;
  const end = events.map((e) => e.type).lastIndexOf("response.completed");
  const start = events.slice(0, end).map((e) => e.type).lastIndexOf("response.started");
  const text = events.slice(start, end).filter((e) => e.type === "text.delta").map((e) => e.delta).join("");
  return { text, status: events[end].status };
}
"""


class TcpProxy:
    """A TCP proxy on port 0, in a thread of its own, to a target port that can change.

    `drop()` resets every connection it carries, with no WebSocket close frame: the browser sees
    close 1006, as after a network change.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._carry, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            for end in pair:
                end.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= pair

    def drop(self) -> None:
        def abort() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(abort)


def start_service(keys_dir: Path, log_path: Path) -> ServiceProcess:
    return ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir), "REALTIME_DEV": "true"}, log_path=log_path
    ).start()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client") / "keys"
    ensure_keys(path, now=int(time.time()) - 60)
    return path


@pytest.fixture(scope="module")
def api_key(keys_dir: Path) -> str:
    """A runtime key of project `docs`, for the docs' example backend (made before the service starts)."""
    key, _ = create_key(keys_dir / "api_keys.json", project="docs", kind="runtime", now=int(time.time()))
    return key


@pytest.fixture(scope="module")
def service(keys_dir: Path, api_key: str) -> Iterator[ServiceProcess]:
    process = start_service(keys_dir, keys_dir.parent / "service.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def open_page(browser: Any, url: str) -> Any:
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/healthz")  # any page of the origin: the test imports the package itself
    return page


@pytest.fixture
def page(browser: Any, service: ServiceProcess) -> Iterator[Any]:
    page = open_page(browser, service.url)
    yield page
    page.context.close()


def start(
    page: Any,
    *,
    model: str = "openai/gpt-realtime-2",
    config: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    ticket: str | None = None,
    first: str | None = None,
    bad: bool = False,
) -> dict[str, Any]:
    """Make the session, connect, and return what `connect()` settled with.

    `getTicket` mints through the dev route, except: `ticket` is returned every time; `first` is
    returned the first time; with `bad`, a new ticket the edge refuses every time.
    """
    arguments = {
        "model": model,
        "config": config or {},
        "options": options or {},
        "ticket": ticket,
        "first": first,
        "bad": bad,
    }
    page.evaluate(SETUP, arguments)
    result: dict[str, Any] = page.evaluate("window.t.connected")
    return result


def wait_for_event(page: Any, expression: str) -> None:
    page.wait_for_function(f"window.t.events.some((e) => {expression})", timeout=DEADLINE_MS)


def redemptions(service_url: str, code: str) -> float:
    text = httpx.get(service_url + "/metrics", timeout=10).text
    match = re.search(rf'^realtime_redemptions_total\{{code="{code}"\}} ([0-9.]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_connect_text_round_trip_and_playback(page: Any, service: ServiceProcess) -> None:
    before = redemptions(service.url, "ok")
    result = start(page)
    started = result["started"]
    assert started["type"] == "session.started" and started["session_id"].startswith("sess_")
    assert (started["model"], started["output_sample_rate"]) == ("openai/gpt-realtime-2", 24000)
    assert redemptions(service.url, "ok") == before + 1
    assert page.evaluate("window.t.sent[0]") == {"type": "session.start", "config": {}}
    assert page.evaluate("window.t.session.sendText('hello from the package')") is True
    wait_for_event(page, "e.type === 'response.completed'")
    answer = page.evaluate(LAST_ANSWER)
    assert answer == {"text": "You said: hello from the package", "status": "completed"}
    # The local model's 600 ms of audio at 24 kHz arrived, and the playback worklet rendered it.
    assert page.evaluate("window.t.session.stats.receivedSamples") == 14_400
    page.wait_for_function("window.t.session.stats.playedSeconds >= 0.6", timeout=DEADLINE_MS)
    page.evaluate("window.t.session.close()")
    assert page.evaluate("window.t.close") == {
        "code": "closed",
        "message": "closed by the app",
        "closeCode": 1000,
    }
    assert page.evaluate("window.t.session.sendText('too late')") is False


def test_microphone_from_the_fake_capture_reaches_audio_append(page: Any) -> None:
    # Gemini's 16 kHz input: the worklet resamples the device's rate down to it.
    started = start(page, model="gemini/gemini-3.1-flash-live-preview", config={"input_transcription": True})
    assert started["started"]["input_sample_rate"] == 16000
    page.evaluate("window.t.session.startMicrophone()")
    # The server's detector heard the fake device's beep in what the page appended.
    wait_for_event(page, "e.type === 'speech.started'")
    page.evaluate("window.t.session.stopMicrophone()")
    wait_for_event(page, "e.type === 'transcript.committed'")
    wait_for_event(page, "e.type === 'response.completed'")
    assert "seconds of audio" in page.evaluate(LAST_ANSWER)["text"]
    appended = page.evaluate(
        "window.t.sent.filter((e) => e.type === 'audio.append').map((e) => atob(e.audio).length)"
    )
    assert appended and set(appended) == {3200}  # 100 ms blocks: 1,600 PCM16 samples at 16 kHz
    assert page.evaluate("window.t.session.stats.sentSamples") == 1600 * len(appended)
    assert page.evaluate("window.t.sent.at(-1)") == {"type": "audio.commit"}
    assert page.evaluate("window.t.session.microphoneOn") is False


LOUD = """
async () => {
  const { floatToPcm16, pcm16ToBase64 } = await import("/client/pcm.js");
  const tone = new Float32Array(2400).map((_, i) => 0.5 * Math.sin((2 * Math.PI * 440 * i) / 24000));
  return window.t.session.send({ type: "audio.append", audio: pcm16ToBase64(floatToPcm16(tone)) });
}
"""


def test_barge_in_cancels_the_answer(page: Any) -> None:
    start(page)
    # A long answer streams one word per delta: the user talks over it.
    page.evaluate("window.t.session.sendText('word '.repeat(400))")
    wait_for_event(page, "e.type === 'text.delta'")
    assert page.evaluate(LOUD) is True
    wait_for_event(page, "e.type === 'response.completed'")
    types = page.evaluate("window.t.events.map((e) => e.type)")
    assert types.index("speech.started") < types.index("(interrupted)") < types.index("response.completed")
    assert page.evaluate(LAST_ANSWER)["status"] == "cancelled"
    sent = page.evaluate("window.t.sent.map((e) => e.type)")
    assert sent.count("response.cancel") == 1


def expired_ticket(keys_dir: Path) -> str:
    """A ticket this deployment signed that expired a minute ago (as one minted long before use)."""
    signer = KeySet.load(keys_dir).signer
    assert signer is not None and signer.private_key is not None
    now = int(time.time())
    header = {"alg": "EdDSA", "kid": signer.kid, "typ": "opper-ticket+jwt"}
    claims: dict[str, Any] = {"iss": "opper-realtime", "aud": "opper-realtime", "sub": "dev"}
    claims |= {"jti": secrets.token_urlsafe(16), "iat": now - 120, "exp": now - 60}
    signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
    signature = signer.private_key.sign(signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


def test_an_expired_ticket_is_replaced_by_a_fresh_one(
    page: Any, service: ServiceProcess, keys_dir: Path
) -> None:
    before = redemptions(service.url, "ticket_expired")
    result = start(page, first=expired_ticket(keys_dir), options={"reconnect": {"baseDelayMs": 10}})
    assert result["started"]["type"] == "session.started"
    assert page.evaluate("window.t.reconnecting.map((e) => [e.code, e.closeCode])") == [
        ["handshake_failed", 1006]
    ]
    assert page.evaluate("window.t.tickets") == 2
    assert redemptions(service.url, "ticket_expired") == before + 1


def test_a_replayed_ticket_ends_with_ticket_replayed(page: Any, service: ServiceProcess) -> None:
    used = page.evaluate(
        """async () => {
          const { client_secret } = await (await fetch("/dev/ticket", { method: "POST" })).json();
          const url = "ws://" + location.host + "/v3/realtime";
          const ws = new WebSocket(url, ["realtime", "opper-ticket." + client_secret]);
          await new Promise((resolve) => (ws.onopen = resolve));
          ws.close(1000);
          return client_secret;
        }"""
    )
    before = redemptions(service.url, "ticket_replayed")
    result = start(page, ticket=used, options={"reconnect": {"baseDelayMs": 10}})
    assert result["code"] == "ticket_replayed" and result["name"] == "RealtimeSessionError"
    close = page.evaluate("window.t.close")
    assert close["code"] == "ticket_replayed" and "already presented" in close["message"]
    # The first handshake was refused (the browser sees only that it failed); the second attempt got
    # the same ticket back and never sent it.
    assert page.evaluate("window.t.reconnecting.map((e) => e.code)") == ["handshake_failed"]
    assert page.evaluate("window.t.tickets") == 2
    assert redemptions(service.url, "ticket_replayed") == before + 1


def test_refused_handshakes_give_up_with_handshake_failed(page: Any, service: ServiceProcess) -> None:
    before = redemptions(service.url, "invalid_ticket")
    result = start(page, bad=True, options={"reconnect": {"maxAttempts": 2, "baseDelayMs": 10}})
    assert result["code"] == "handshake_failed"
    assert page.evaluate("window.t.reconnecting.map((e) => e.code)") == [
        "handshake_failed",
        "handshake_failed",
    ]
    close = page.evaluate("window.t.close")
    assert close["code"] == "handshake_failed" and close["closeCode"] == 1006
    assert page.evaluate("window.t.tickets") == 3
    assert redemptions(service.url, "invalid_ticket") == before + 3


def test_a_refused_start_surfaces_its_code_and_does_not_reconnect(page: Any) -> None:
    result = start(page, config={"voice": "nobody"})
    assert result["code"] == "unsupported_voice"
    assert page.evaluate("window.t.close") == {
        "code": "unsupported_voice",
        "message": page.evaluate("window.t.events.find((e) => e.type === 'error').error.message"),
        "closeCode": 1000,
    }
    assert page.evaluate("window.t.reconnecting") == []
    assert page.evaluate("window.t.tickets") == 1


@pytest.mark.parametrize("how", ["network-drop", "edge-drain"])
def test_reconnects_with_a_fresh_ticket_and_the_last_config(browser: Any, keys_dir: Path, how: str) -> None:
    logs = keys_dir.parent
    first = start_service(keys_dir, logs / f"{how}-1.log")
    second: ServiceProcess | None = None
    try:
        with TcpProxy(first.port) as proxy:
            page = open_page(browser, proxy.url)
            options = {"reconnect": {"maxAttempts": 60, "baseDelayMs": 100, "maxDelayMs": 1000}}
            before = start(page, config={"instructions": "be brief"}, options=options)["started"]
            page.evaluate("window.t.session.updateConfig({ voice: 'cedar', instructions: 'be briefer' })")
            wait_for_event(page, "e.type === 'session.updated'")
            if how == "network-drop":
                proxy.drop()  # the edge's socket vanishes: close 1006, no session.terminating
                expected = "connection_lost"
            else:
                second = start_service(keys_dir, logs / f"{how}-2.log")
                proxy.target = second.port  # new connections reach the new edge
                first.signal(signal.SIGTERM)  # the old one drains: server_shutdown, close 1012
                assert first.wait(timeout=30) in (0, -signal.SIGTERM)
                expected = "server_shutdown"
            page.wait_for_function(
                "window.t.statuses.filter((s) => s === 'started').length === 2", timeout=DEADLINE_MS
            )
            reconnects = page.evaluate("window.t.reconnecting")
            assert reconnects[0]["code"] == expected and reconnects[0]["attempt"] == 1
            after = page.evaluate("window.t.session.session")
            assert after["session_id"] != before["session_id"]
            assert page.evaluate("window.t.tickets") == 1 + len(reconnects)
            # The new session started with the app's config as last updated.
            starts = page.evaluate("window.t.sent.filter((e) => e.type === 'session.start')")
            assert starts[-1] == {
                "type": "session.start",
                "config": {"voice": "cedar", "instructions": "be briefer"},
            }
            assert page.evaluate("window.t.session.sendText('/config')") is True
            page.wait_for_function(
                "window.t.events.filter((e) => e.type === 'response.completed').length === 1",
                timeout=DEADLINE_MS,
            )
            effective = page.evaluate(LAST_ANSWER)["text"]
            assert '"voice":"cedar"' in effective and '"instructions":"be briefer"' in effective
            page.evaluate("window.t.session.close()")
            page.context.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def docs_block(language: str) -> str:
    """The one fenced block of `language` in docs/browser.md whose code is a whole file."""
    page = (ROOT / "docs" / "browser.md").read_text()
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", page, re.M | re.S)
    complete = [block for block in blocks if "import" in block]
    assert len(complete) == 1, f"docs/browser.md: expected one complete {language} block"
    return str(complete[0])


def test_the_docs_example_talks_to_the_local_model(
    browser: Any, service: ServiceProcess, api_key: str, tmp_path: Path
) -> None:
    """docs/browser.md's backend and page, as a new user copies them, with the package installed."""
    edge = f"127.0.0.1:{service.port}"
    (tmp_path / "backend.py").write_text(docs_block("python"))
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "index.html").write_text(docs_block("html").replace("127.0.0.1:8000", edge))
    installed = tmp_path / "node_modules" / "@realtime-tickets" / "client"
    shutil.copytree(ROOT / "clients" / "js", installed, ignore=shutil.ignore_patterns("test"))
    log_path = tmp_path / "backend.log"
    with log_path.open("wb") as log:
        backend = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend:app", "--host", "127.0.0.1", "--port", "0"],
            cwd=tmp_path,
            env={**os.environ, "REALTIME_URL": service.url, "REALTIME_API_KEY": api_key},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"Uvicorn running on http://127.0.0.1:(\d+)", log_path.read_text())):
            assert backend.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        page = open_page(browser, f"http://127.0.0.1:{match.group(1)}")
        page.goto(f"http://127.0.0.1:{match.group(1)}/")  # static/index.html
        page.click("#talk")
        page.wait_for_function(
            "document.getElementById('out').textContent.includes('You said: Hello!\\n')", timeout=DEADLINE_MS
        )
        # The fake microphone's beep is the user talking; Stop ends the turn.
        page.wait_for_function(
            "document.getElementById('out').textContent.includes('[you are speaking]')", timeout=DEADLINE_MS
        )
        assert page.inner_text("#talk") == "Stop"
        page.click("#talk")
        page.wait_for_function(
            "document.getElementById('out').textContent.includes('seconds of audio.')", timeout=DEADLINE_MS
        )
        assert "[ended" not in page.inner_text("#out")
        page.context.close()
    finally:
        terminate(backend, timeout=10)
