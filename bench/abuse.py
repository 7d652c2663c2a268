"""Case 7: four sessions flood the edge at full speed; what it costs everyone else.

Each flooding session sends 750 KB `audio.append` frames as fast as its socket takes them (the edge
holds it to its rate limit). Meanwhile `/healthz` is asked over and over and a fresh ticket is
redeemed; the edge's resident memory is read before and at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from bench.common import CaseResult, Plan, Row, new_keys, service
from bench.procs import ROOT, rss_bytes

FLOODERS = 4
AUDIO = base64.b64encode(bytes(range(256)) * 2200).decode()  # 563 KB of noise: 750 KB encoded


@contextlib.contextmanager
def _open(port: int, api_key: str) -> Iterator[ClientConnection]:
    """A started session (a bearer key: nothing bound), closed on leaving."""
    with connect(
        f"ws://127.0.0.1:{port}/v3/realtime",
        additional_headers={"Authorization": f"Bearer {api_key}"},
        open_timeout=10,
        max_size=None,
    ) as ws:
        ws.send(json.dumps({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}))
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "session.started", event
        yield ws


def _flood(ws: ClientConnection, stop: threading.Event) -> None:
    """Send one prebuilt, masked frame over and over: the flooder costs next to no CPU, which on a
    small machine would otherwise be taken from the edge it measures."""
    event = json.dumps({"type": "audio.append", "audio": AUDIO}).encode()
    data = Frame(Opcode.TEXT, event).serialize(mask=True, extensions=[])
    with contextlib.suppress(ConnectionClosed, OSError):
        while not stop.is_set():
            ws.socket.sendall(data)


def _drain(ws: ClientConnection, stop: threading.Event) -> None:
    """Read what the edge answers, so only the edge's limits hold the flood back."""
    with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
        while not stop.is_set():
            ws.recv(timeout=1)


def flood(port: int, api_key: str, seconds: float) -> None:
    """Open the flooding sessions, flood for `seconds`, close (in its own process: see `case_abuse`)."""
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        threads = []
        for _ in range(FLOODERS):
            ws = stack.enter_context(_open(port, api_key))
            threads += [
                threading.Thread(target=_flood, args=(ws, stop)),
                threading.Thread(target=_drain, args=(ws, stop)),
            ]
        for thread in threads:
            thread.start()
        print("flooding", flush=True)
        time.sleep(seconds)
        stop.set()
    for thread in threads:
        thread.join(timeout=30)


def case_abuse(plan: Plan) -> CaseResult:
    """The flooders run in a process of their own: their threads would otherwise hold this process's
    interpreter lock and lengthen the very latencies measured here."""
    keys_dir, api_key = new_keys(plan.workdir, "abuse")
    seconds = 2.0 if plan.quick else 4.0  # under the 5 s a session may stay over its rate
    with service(plan, "abuse", keys_dir) as server:
        before = rss_bytes(server.pid)
        flooders = subprocess.Popen(
            [sys.executable, "-m", "bench.abuse", str(server.port), api_key, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert flooders.stdout is not None and flooders.stdout.readline().strip() == "flooding"
            latencies: list[float] = []
            redeem: float | None = None
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
                middle = time.monotonic() + seconds / 2
                ends = time.monotonic() + seconds - 0.2
                while time.monotonic() < ends or not latencies:
                    began = time.perf_counter()
                    assert client.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - began)
                    time.sleep(0.01)
                    if redeem is None and time.monotonic() >= middle:
                        began = time.perf_counter()
                        _open_and_close(server.port, api_key)
                        redeem = time.perf_counter() - began
            assert redeem is not None  # the loop runs past the middle of the flood
            peak = rss_bytes(server.pid)
            flooders.wait(timeout=60)
        finally:
            if flooders.poll() is None:
                flooders.kill()
                flooders.wait()
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    grown = (peak - before) / 2**20
    result = CaseResult("abuse")
    result.data = {
        "flooders": FLOODERS,
        "seconds": seconds,
        "healthz_samples": len(latencies),
        "healthz_p99_ms": p99 * 1000,
        "healthz_max_ms": max(latencies) * 1000,
        "redeem_seconds": redeem,
        "rss_before_bytes": before,
        "rss_peak_bytes": peak,
    }
    detail = f"{FLOODERS} sessions, 750 KB audio.append frames, {seconds:g} s"
    result.rows = [
        Row("7. Abuse", "/healthz p99 while sessions flood", p99 * 1000, "ms", "< 50", p99 < 0.05, detail),
        Row("7. Abuse", "fresh session opened during the flood", redeem, "s", "< 1", redeem < 1, detail),
        # Four sessions' budgets (8 MiB each) and what the process's allocator keeps around them.
        Row("7. Abuse", "memory grown during the flood", grown, "MiB", "< 96", grown < 96, detail),
    ]
    return result


if __name__ == "__main__":
    flood(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))


def _open_and_close(port: int, api_key: str) -> None:
    """Open a session and close it at once (a fresh redemption while the others flood)."""
    with _open(port, api_key):
        pass
