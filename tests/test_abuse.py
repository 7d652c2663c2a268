"""One ticket holder must not hurt the edge (docs/protocol.md): real processes, real sockets.

Each flood is one that grew a real edge's memory without end, held its event loop, or dropped a
session without a close frame; each test fails on an edge without the bounds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from app.server.runner import DRAIN_SECONDS
from tests.edges import MIB, TEXT_ONLY, edge, started
from tests.rawsocket import PING, TEXT, frame


def terminated(ws: ClientConnection) -> tuple[str, int]:
    """Read up to `session.terminating` and the close: (its code, the close code)."""
    while True:
        event = json.loads(ws.recv(timeout=30))
        if event["type"] == "session.terminating":
            break
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return str(event["error"]["code"]), closed.value.rcvd.code


def flood(ws: ClientConnection, frame: str, *, stop: threading.Event) -> None:
    """Send `frame` until told to stop or the server closes."""
    try:
        while not stop.is_set():
            ws.send(frame)
    except (ConnectionClosed, OSError):
        return


def test_text_flood_is_stopped_by_the_memory_budget(tmp_path: Path) -> None:
    """1 MB `text.input` frames without a response grew an edge by 2 GiB in 10 s."""
    with edge(tmp_path, REALTIME_MAX_BYTES_PER_SECOND=str(64 * MIB)) as service, service.connect() as ws:
        before = service.rss()
        started(ws)
        frame = json.dumps({"type": "text.input", "text": "x" * 1_000_000})
        stop = threading.Event()
        sender = threading.Thread(target=flood, args=(ws, frame), kwargs={"stop": stop})
        sender.start()
        try:
            assert terminated(ws) == ("session_overloaded", 1008)
        finally:
            stop.set()
            sender.join(timeout=30)
        assert service.rss() - before < 64 * MIB


def test_a_long_reply_is_never_built_whole(tmp_path: Path) -> None:
    """Four 1 MB texts of one-letter words, then `response.create`: the deltas held 530 MB at once."""
    with edge(tmp_path, REALTIME_MAX_BYTES_PER_SECOND=str(64 * MIB)) as service, service.connect() as ws:
        started(ws)
        before = service.rss()
        for _ in range(4):
            ws.send(json.dumps({"type": "text.input", "text": "x " * 500_000}))
        ws.send(json.dumps({"type": "response.create"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "response.started"
        for _ in range(20):
            assert json.loads(ws.recv(timeout=10))["type"] == "text.delta"
        assert service.rss() - before < 64 * MIB


def test_a_client_that_floods_and_never_reads_is_rate_limited(tmp_path: Path) -> None:
    """A million `audio.commit` frames from a client that never read: 358 MB of queued errors.

    At 20 frames a second, so that a busy test machine is never slower than the limit.
    """
    with edge(tmp_path, REALTIME_MAX_FRAMES_PER_SECOND="20") as service:
        client = service.raw(receive_buffer=4096)
        client.send_event({"type": "session.start", "config": TEXT_ONLY})
        before = service.rss()
        commit = frame(TEXT, json.dumps({"type": "audio.commit"}).encode()) * 1000
        client.sock.settimeout(1)
        sent = 0
        with contextlib.suppress(TimeoutError):  # until the edge stops reading
            while sent < 1_000_000:
                client.sock.sendall(commit)
                sent += 1000
        grown = service.rss() - before
        client.sock.settimeout(30)
        events, close = client.events_until_close()
        assert events[0]["type"] == "session.started"
        assert events[-1]["type"] == "session.terminating", events[-3:]
        assert (events[-1]["error"]["code"], close) == ("rate_limited", 1008)
        assert grown < 64 * MIB
        client.close()


def test_an_audio_flood_leaves_the_edge_answering(tmp_path: Path) -> None:
    """750 KB `audio.append` frames in a loop: `/healthz` took 8 to 12 s and a handshake timed out."""
    audio = base64.b64encode(bytes(range(256)) * 2200).decode()  # 563 KB of noise, 750 KB encoded
    frame = json.dumps({"type": "audio.append", "audio": audio})
    with edge(tmp_path) as service, contextlib.ExitStack() as stack:
        stop = threading.Event()
        threads = []
        for _ in range(2):
            ws = stack.enter_context(service.connect())
            started(ws, {"model": "openai/gpt-realtime-2"})
            threads.append(threading.Thread(target=flood, args=(ws, frame), kwargs={"stop": stop}))
            threads[-1].start()
        try:
            with httpx.Client(base_url=service.process.url, timeout=10) as client:
                for _ in range(20):
                    assert client.get("/healthz").status_code == 200
            with service.connect() as fresh:
                started(fresh)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)


def test_pings_without_reading_the_pongs_do_not_grow_the_edge(tmp_path: Path) -> None:
    """Pings from a client that never reads: the pongs were queued without limit (24 MB/s)."""
    with edge(tmp_path) as service:
        client = service.raw(receive_buffer=4096)
        before = service.rss()
        client.sock.settimeout(2)
        ping = frame(PING, b"p" * 125) * 1000
        sent = 0
        try:
            while sent < 64 * MIB:
                client.sock.sendall(ping)
                sent += len(ping)
        except TimeoutError:
            pass  # the edge stopped reading: what a client that does not read should meet
        assert sent < 64 * MIB
        assert service.rss() - before < 16 * MIB
        client.close()


@pytest.mark.parametrize(
    ("frame", "started_first", "code"),
    [
        ("[" * 100_000, False, "session_not_started"),
        ("[" * 100_000, True, "invalid_event"),
        ('{"type": "text.input", "text": "a", "n": NaN}', True, "invalid_event"),
        ('{"type": "response.create", "n": Infinity}', True, "invalid_event"),
        ('{"type": "session.start", "config": {"temperature": -Infinity}}', False, "session_not_started"),
    ],
    ids=["nesting-before-start", "nesting-after-start", "nan", "infinity", "infinity-in-start"],
)
def test_hostile_json_gets_its_code(tmp_path: Path, frame: str, started_first: bool, code: str) -> None:
    """`[` * 100000 dropped the session without a close frame; `NaN` and `Infinity` were accepted."""
    with edge(tmp_path) as service, service.connect() as ws:
        if started_first:
            started(ws)
        ws.send(frame)
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "error" and event["error"]["code"] == code
        if started_first:
            ws.send(json.dumps({"type": "text.input", "text": "still here"}))
            ws.send(json.dumps({"type": "response.create"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "response.started"
        else:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_text_that_is_not_utf8_closes_1007(tmp_path: Path) -> None:
    with edge(tmp_path) as service:
        client = service.raw()
        client.send(TEXT, b'{"type": "session.start", "config": {"instructions": "\xff\xfe"}}')
        events, close = client.events_until_close()
        assert events == [] and close == 1007
        client.close()


def _server_queue(port: int, pid: int) -> list[int]:
    """Bytes waiting in the edge's send queue, per established connection from its `port`."""
    queues = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            queues.append(int(fields[4].split(":")[0], 16))
    return queues


def test_shutdown_drains_clients_that_do_not_read_at_once(tmp_path: Path) -> None:
    """Each session used to get up to 5 s in turn: k clients that stopped reading took about 5 k s."""
    with edge(tmp_path, REALTIME_MAX_BYTES_PER_SECOND=str(64 * MIB)) as service:
        clients = []
        for _ in range(4):
            client = service.raw(receive_buffer=4096)
            client.send_event({"type": "session.start", "config": TEXT_ONLY})
            word = "x" * 100_000 + " "
            for _ in range(6):  # a reply of 6 MB in 100 KB words, more than the sockets hold
                client.send_event({"type": "text.input", "text": word * 10})
            client.send_event({"type": "response.create"})
            clients.append(client)
        assert service.process.process is not None
        pid, port = service.process.process.pid, service.process.port
        give_up = time.monotonic() + 30
        while sum(queue > 1 * MIB for queue in _server_queue(port, pid)) < 4:
            assert time.monotonic() < give_up, _server_queue(port, pid)
            time.sleep(0.05)
        stopped = time.monotonic()
        service.process.signal(signal.SIGTERM)
        assert service.process.wait(timeout=60) in (0, -signal.SIGTERM)
        took = time.monotonic() - stopped
        assert took < DRAIN_SECONDS, took
        assert service.process.log().count("server_shutdown") >= 4
        for client in clients:
            client.close()
