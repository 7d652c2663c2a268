"""What the relay and provider connections hold counts against a session's memory budget.

A provider connection reads only when the session asks; its own events and the silence check
interrupt a wait on the provider.

Unit tests of the counts (a fake socket for one module), and a real edge relaying to an upstream that
floods it while the browser reads nothing: the session ends `session_overloaded`, close 1008.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.exceptions import UpstreamError
from app.session.models import ModelRegistry
from app.session.upstream import Buffered, Filling, SessionInfo
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from app.upstreams.outbox import Outbox
from app.upstreams.providers.adapter import ProvidersUpstream
from app.upstreams.providers.connection import ProviderConnection
from app.upstreams.providers.link import ERROR_BYTES, EVENT_BYTES, Endpoint
from app.upstreams.providers.openai import OpenAITranslator
from app.upstreams.relay import OUTBOX_FRAMES, RelayUpstream
from tests.servers import ServiceProcess

OPENAI = ModelRegistry.load().get("openai/gpt-realtime-2")
KIB = 1024


async def until(condition: Callable[[], bool], *, seconds: float = 10) -> None:
    """Poll `condition` (yielding to the loop) until it holds or the deadline passes."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


# The outbox -------------------------------------------------------------------------------------


def test_the_outbox_counts_what_it_holds_and_what_waits_for_room() -> None:
    async def scenario() -> list[int]:
        outbox: Outbox[str] = Outbox(2)
        growths: list[int] = []
        outbox.on_growth(lambda: growths.append(outbox.held))
        await outbox.put("a", 100)
        await outbox.put("b", 20)
        waiting = asyncio.get_running_loop().create_task(outbox.put("c", 3))
        await asyncio.sleep(0)
        held = [outbox.held]  # the third waits for room, and is counted
        assert await outbox.get() == "a"
        held.append(outbox.held)
        await waiting
        assert [await outbox.get(), await outbox.get()] == ["b", "c"]
        held.append(outbox.held)
        stuck = asyncio.get_running_loop().create_task(outbox.put("d", 7))
        await outbox.put("e", 1)
        await outbox.put("f", 1)
        await asyncio.sleep(0)
        held.append(outbox.held)
        stuck.cancel()  # a reader cancelled while it waits no longer holds its item
        with pytest.raises(asyncio.CancelledError):
            await stuck
        held.append(outbox.held)
        return held + [len(growths)]

    held = asyncio.run(scenario())
    assert held[:3] == [123, 23, 0]
    assert held[4] == held[3] - 7
    assert held[5] == 6  # one notification per put


# The provider connection -------------------------------------------------------------------------


class FakeSocket:
    """The provider's side of a socket: frames to deliver (more may come), then silence; what was sent."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames
        self.sent: list[str] = []
        self._arrived: asyncio.Event | None = None

    def deliver(self, frame: str) -> None:
        self.frames.append(frame)
        if self._arrived is not None:
            self._arrived.set()

    async def send(self, frame: str) -> None:
        self.sent.append(frame)

    async def recv(self) -> str:
        while not self.frames:  # cancelled here, nothing is lost (as with websockets' recv)
            self._arrived = asyncio.Event()
            await self._arrived.wait()
        return self.frames.pop(0)

    async def close(self) -> None:
        pass


def openai_text(size: int) -> str:
    return json.dumps({"type": "response.output_text.delta", "delta": "x" * size})


def provider_connection(socket: FakeSocket) -> ProviderConnection:
    return ProviderConnection(
        socket,  # type: ignore[arg-type]
        OpenAITranslator({}, OPENAI),
        Endpoint("openai", "ws://unused", "sk-test"),
        timeout=1,
        dropped=lambda provider, kind: None,
    )


def test_a_provider_connection_reads_only_when_asked_and_counts_the_frames_behind_its_events() -> None:
    failed = json.dumps(
        {"type": "response.done", "response": {"status": "failed", "status_details": {"error": {}}}}
    )  # two events: an error, then the failed completion
    texts = [openai_text(KIB * n) for n in range(1, 21)]
    socket = FakeSocket([json.dumps({"type": "session.updated"}), failed, *texts])

    async def scenario() -> None:
        connection = provider_connection(socket)
        assert isinstance(connection, Buffered) and isinstance(connection, Filling)
        growths: list[int] = []
        connection.on_growth(lambda: growths.append(connection.buffered_bytes()))
        await connection.start()
        try:
            # Nothing is read ahead of the session: a browser that reads slowly slows the provider.
            await asyncio.sleep(0.05)
            assert len(socket.frames) == 1 + len(texts)
            assert connection.buffered_bytes() == 0 and growths == []
            # A message that became two events: the second waits, counted with the frame behind it.
            assert (await connection.receive())["type"] == "error"  # type: ignore[index]
            assert growths == [EVENT_BYTES + len(failed)]
            assert connection.buffered_bytes() == EVENT_BYTES + len(failed)
            assert (await connection.receive())["type"] == "response.completed"  # type: ignore[index]
            assert connection.buffered_bytes() == 0
            for count, text in enumerate(texts, 1):  # one frame read per event taken, nothing held
                assert await connection.receive() == json.loads(text) | {"type": "text.delta"}
                assert len(socket.frames) == len(texts) - count
                assert connection.buffered_bytes() == 0
            # An event the provider cannot take is an error event of ours, counted while it waits.
            await connection.send({"type": "made.up"})
            assert connection.buffered_bytes() == ERROR_BYTES
            assert growths[-1] == ERROR_BYTES
            assert (await connection.receive())["type"] == "error"  # type: ignore[index]
            assert connection.buffered_bytes() == 0
        finally:
            await connection.aclose()

    asyncio.run(scenario())


def test_an_error_event_of_ours_reaches_a_receive_waiting_on_a_silent_provider() -> None:
    socket = FakeSocket([json.dumps({"type": "session.updated"})])

    async def scenario() -> None:
        connection = provider_connection(socket)
        await connection.start()
        try:
            waiting = asyncio.get_running_loop().create_task(connection.receive())
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await connection.send({"type": "made.up"})
            event = await asyncio.wait_for(waiting, 5)
            assert event is not None and event["type"] == "error"
            assert connection.buffered_bytes() == 0
            # The wait it interrupted goes on: the provider's next frame is the next event, and the
            # task that waited was not left cancelling.
            assert waiting.cancelling() == 0
            waiting = asyncio.get_running_loop().create_task(connection.receive())
            await asyncio.sleep(0.05)
            socket.deliver(openai_text(3))
            assert await asyncio.wait_for(waiting, 5) == {"type": "text.delta", "delta": "xxx"}
            # Interrupted and cancelled from outside at once: the cancellation still wins.
            waiting = asyncio.get_running_loop().create_task(connection.receive())
            await asyncio.sleep(0.05)
            await connection.send({"type": "made.up"})
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert (await connection.receive())["type"] == "error"  # type: ignore[index]
        finally:
            await connection.aclose()

    asyncio.run(scenario())


def test_a_receive_waiting_past_the_response_timeout_is_an_upstream_error() -> None:
    socket = FakeSocket([json.dumps({"type": "session.updated"})])

    async def scenario() -> None:
        connection = ProviderConnection(
            socket,  # type: ignore[arg-type]
            OpenAITranslator({}, OPENAI),
            Endpoint("openai", "ws://unused", "sk-test"),
            timeout=1,
            dropped=lambda provider, kind: None,
            response_timeout=0.2,
        )
        await connection.start()
        try:
            await connection.send({"type": "response.create"})  # an answer is asked for
            started = time.monotonic()
            with pytest.raises(UpstreamError, match=r"stopped answering \(nothing for 0.2 s"):
                await connection.receive()
            assert time.monotonic() - started >= 0.15
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0  # the silence check's cancel is taken back
            with pytest.raises(UpstreamError, match="stopped answering"):
                await connection.receive()  # and stays
        finally:
            await connection.aclose()

    asyncio.run(scenario())


def test_a_provider_that_stops_reading_ends_the_session_within_the_send_timeout() -> None:
    """Sends are written at once while the write buffer has room; once the provider has stopped
    reading and the buffers are full, a send waits at most the timeout: the session ends."""

    async def handler(connection: ServerConnection) -> None:
        await connection.recv()  # the session's configuration
        await connection.send(json.dumps({"type": "session.updated"}))
        connection.transport.pause_reading()  # it reads nothing more
        await connection.wait_closed()

    async def scenario() -> None:
        # A short close timeout: its side of the close waits on a peer that stopped reading too.
        async with serve(handler, "127.0.0.1", 0, compression=None, close_timeout=0.5) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
            upstream = ProvidersUpstream({"openai": Endpoint("openai", url, "sk-test")}, timeout=1)
            chunk = {"type": "audio.append", "audio": base64.b64encode(bytes(48 * KIB)).decode()}
            async with upstream.connect(SessionInfo("sess_1", "proj", {}, OPENAI)) as connection:
                started = time.monotonic()
                with pytest.raises(UpstreamError, match=r"^openai stopped reading: a send waited over 1 s$"):
                    for _ in range(2_000):  # at most 128 MB: the socket buffers fill long before
                        await connection.send(chunk)
                assert time.monotonic() - started < 30

    asyncio.run(asyncio.wait_for(scenario(), 60))


# The relay connection ----------------------------------------------------------------------------


@contextmanager
def relay_upstream(
    after_start: Callable[[ServerConnection], Awaitable[None]],
) -> Iterator[tuple[str, threading.Event]]:
    """A WebSocket upstream in a thread: starts each session, then runs `after_start`.

    Yields its URL and an event set once a session's connection has closed.
    """
    ready, stop, closed = threading.Event(), threading.Event(), threading.Event()
    port: list[int] = []

    async def handler(connection: ServerConnection) -> None:
        try:
            start = json.loads(await connection.recv())
            assert start["type"] == "session.start"
            await connection.send(json.dumps({"type": "session.started", "session": {}}))
            await after_start(connection)
            await connection.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            closed.set()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{port[0]}/v3/realtime", closed
    finally:
        stop.set()
        thread.join(10)


def test_a_relay_connection_counts_the_frames_it_has_read() -> None:
    frames = [json.dumps({"type": "text.delta", "delta": "y" * (KIB * n)}) for n in range(1, 21)]

    async def send_all(connection: ServerConnection) -> None:
        for frame in frames:
            await connection.send(frame)

    async def scenario(url: str) -> None:
        upstream = RelayUpstream(url, api_key=None, timeout=10)
        async with upstream.connect(SessionInfo("sess_1", "proj", {}, OPENAI)) as connection:
            assert isinstance(connection, Buffered) and isinstance(connection, Filling)
            growths: list[int] = []
            connection.on_growth(lambda: growths.append(connection.buffered_bytes()))
            await until(lambda: len(growths) == OUTBOX_FRAMES + 1)
            assert connection.buffered_bytes() == sum(map(len, frames[: OUTBOX_FRAMES + 1]))
            assert await connection.receive() == frames[0]
            await until(lambda: len(growths) == OUTBOX_FRAMES + 2)
            assert connection.buffered_bytes() == sum(map(len, frames[1 : OUTBOX_FRAMES + 2]))
            assert [await connection.receive() for _ in frames[1:]] == frames[1:]
            assert connection.buffered_bytes() == 0

    with relay_upstream(send_all) as (url, _):
        asyncio.run(scenario(url))


def test_a_relay_connection_reports_the_upstream_failing_after_its_frames() -> None:
    async def bad_frame(connection: ServerConnection) -> None:
        await connection.send(json.dumps({"type": "text.delta", "delta": "z"}))
        await connection.send(b"\x00binary")

    async def scenario(url: str) -> None:
        upstream = RelayUpstream(url, api_key=None, timeout=10)
        async with upstream.connect(SessionInfo("sess_1", "proj", {}, OPENAI)) as connection:
            assert await connection.receive() == json.dumps({"type": "text.delta", "delta": "z"})
            for _ in range(2):  # and again: the failure stays
                with pytest.raises(UpstreamError, match="not a JSON object"):
                    await connection.receive()
            assert connection.buffered_bytes() == 0

    with relay_upstream(bad_frame) as (url, _):
        asyncio.run(scenario(url))


# A real edge -------------------------------------------------------------------------------------


def test_an_upstream_flooding_a_client_that_reads_nothing_is_overloaded(tmp_path: Path) -> None:
    """The relay's queue of 16 frames of up to 4 MiB was not counted: 64 MiB held with no end."""
    stop = threading.Event()
    frame = json.dumps({"type": "text.delta", "delta": "f" * (256 * KIB)})

    async def flood(connection: ServerConnection) -> None:
        while not stop.is_set():
            await connection.send(frame)

    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    key, _ = create_key(
        keys_dir / "api_keys.json", project="proj_flood", kind="runtime", now=int(time.time())
    )
    with relay_upstream(flood) as (url, upstream_closed):
        edge = ServiceProcess(
            env={
                "REALTIME_KEYS_DIR": str(keys_dir),
                "REALTIME_UPSTREAM": "relay",
                "REALTIME_UPSTREAM_URL": url,
                "REALTIME_SESSION_MEMORY_BYTES": str(1024 * KIB),
            },
            log_path=tmp_path / "edge.log",
        )
        with edge:
            response = httpx.post(
                edge.url + "/v3/realtime-sessions",
                headers={"Authorization": f"Bearer {key}"},
                json={},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            ticket = response.json()["client_secret"]
            with connect(
                edge.ws_url,
                subprotocols=[f"opper-ticket.{ticket}"],  # type: ignore[list-item]
                open_timeout=10,
                max_size=None,
                max_queue=1,  # the client's reader stops after one message: it reads nothing more
            ) as ws:
                ws.send(json.dumps({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}))
                # Nothing is read until the edge has dropped the upstream: the session is over.
                deadline = time.monotonic() + 30
                while not upstream_closed.is_set():
                    assert time.monotonic() < deadline, "the edge never ended the flooded session"
                    time.sleep(0.05)
                stop.set()
                events: list[dict[str, Any]] = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        events.append(json.loads(ws.recv(timeout=10)))
                assert events[0]["type"] == "session.started"
                assert events[-1]["type"] == "session.terminating"
                assert events[-1]["error"]["code"] == "session_overloaded"
                assert {event["type"] for event in events[1:-1]} == {"text.delta"}
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        log = edge.log()
        assert "session_overloaded" in log
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
