"""`python -m bench.loadgen`: a load generator in its own process; a JSON spec on stdin, results on stdout.

Modes: `mint` (keep-alive POSTs), `handshake` (upgrade, `session.start`, first answer, close, one ticket
each), `pingpong` (round trips on open sessions: latency alone, then throughput), `hold` (open N
sessions and keep them). It reports its own CPU (getrusage) and the servers' (/proc/<pid>/stat) over
the timed phase only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvloop

from bench.procs import cpu_seconds, raise_nofile, self_cpu_seconds
from bench.wire import Connection, ProtocolError, event_frame, post_request, read_response

HOST = "127.0.0.1"
PATH = "/v3/realtime"
START = {"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}


class Meter:
    """Wall time and CPU of this process and of the watched servers, over one timed phase."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.wall = time.perf_counter()
        self.client = self_cpu_seconds()
        self.servers = [cpu_seconds(pid) for pid in pids]

    def result(self, ops: int, errors: int = 0) -> dict[str, Any]:
        seconds = time.perf_counter() - self.wall
        return {
            "ops": ops,
            "errors": errors,
            "seconds": seconds,
            "rate": ops / seconds if seconds else 0.0,
            "client_cpu": self_cpu_seconds() - self.client,
            "server_cpu": sum(cpu_seconds(pid) for pid in self.pids) - sum(self.servers),
        }


async def _workers(count: int, work: Callable[[], Awaitable[None]]) -> None:
    await asyncio.gather(*(work() for _ in range(count)))


async def mint(spec: dict[str, Any]) -> dict[str, Any]:
    port, deadline_after = spec["port"], spec["duration"]
    request = post_request(HOST, port, spec["path"], spec["body"].encode(), spec["headers"])
    ops = errors = 0
    stop = 0.0

    async def work() -> None:
        nonlocal ops, errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < stop:
                writer.write(request)
                status, _ = await read_response(reader)
                if status == 200:
                    ops += 1
                else:
                    errors += 1
        finally:
            writer.close()

    meter = Meter(spec["server_pids"])
    stop = time.perf_counter() + deadline_after
    await _workers(spec["concurrency"], work)
    return meter.result(ops, errors)


async def handshake(spec: dict[str, Any]) -> dict[str, Any]:
    port = spec["port"]
    tickets: Iterator[str] = iter(Path(spec["tickets_file"]).read_text().split())
    start = event_frame(START)
    expect = spec["expect"]
    ops = errors = 0
    stop = 0.0
    first_error: str | None = None

    async def work() -> None:
        nonlocal ops, errors, first_error
        for ticket in tickets:
            if time.perf_counter() >= stop:
                return
            try:
                headers = {"Sec-WebSocket-Protocol": f"realtime, opper-ticket.{ticket}"}
                connection = await Connection.open(HOST, port, PATH, headers)
                connection.send(start)
                await connection.until(expect)
                connection.close()
                ops += 1
            except (ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
                errors += 1
                first_error = first_error or str(exc)[:200]

    meter = Meter(spec["server_pids"])
    stop = time.perf_counter() + spec["duration"]
    await _workers(spec["concurrency"], work)
    result = meter.result(ops, errors)
    result["first_error"] = first_error
    return result


async def _session(port: int, headers: dict[str, str]) -> Connection:
    connection = await Connection.open(HOST, port, PATH, headers)
    connection.send(event_frame(START))
    await connection.until("session.started")
    return connection


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def pingpong(spec: dict[str, Any]) -> dict[str, Any]:
    """`ping` is a frame the upstream answers at once (`audio.commit` with no audio gives an error)."""
    port, headers = spec["port"], spec["headers"]
    ping = event_frame(spec["ping"])
    answer = spec["answer"]

    async def round_trip(connection: Connection) -> None:
        connection.send(ping)
        await connection.until(answer)

    single = await _session(port, headers)
    for _ in range(spec["warmup"]):
        await round_trip(single)
    latencies = []
    for _ in range(spec["rounds"]):
        began = time.perf_counter()
        await round_trip(single)
        latencies.append(time.perf_counter() - began)
    single.close()

    sessions = await asyncio.gather(*(_session(port, headers) for _ in range(spec["sessions"])))
    ops = 0
    stop = 0.0
    pool = iter(sessions)

    async def work() -> None:
        nonlocal ops
        connection = next(pool)
        while time.perf_counter() < stop:
            await round_trip(connection)
            ops += 1

    meter = Meter(spec["server_pids"])
    stop = time.perf_counter() + spec["duration"]
    await _workers(len(sessions), work)
    result = meter.result(ops)
    for connection in sessions:
        connection.close()
    result["p50"] = _percentile(latencies, 0.50)
    result["p99"] = _percentile(latencies, 0.99)
    return result


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    """Open `warm` sessions, say `warm`; on a line from stdin open `count` more, say `ready`; hold."""
    port, headers = spec["port"], spec["headers"]
    limit = asyncio.Semaphore(spec["concurrency"])
    held: list[Connection] = []
    failures = 0
    first_error: str | None = None

    async def one() -> None:
        nonlocal failures, first_error
        async with limit:
            try:
                held.append(await _session(port, headers))
            except (ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
                failures += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]

    loop = asyncio.get_running_loop()
    await asyncio.gather(*(one() for _ in range(spec["warm"])))
    print(json.dumps({"warm": len(held)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(spec["count"])))
    opened = len(held) - spec["warm"]
    seconds = time.perf_counter() - began
    await asyncio.sleep(0.5)
    # Every session must still be open: a ping each would disturb the idle measurement, so check
    # only that no connection has been closed by the server meanwhile.
    alive = sum(1 for connection in held if not connection.reader.at_eof())
    print(json.dumps({"ready": opened, "alive": alive}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for connection in held:
        connection.close()
    return {
        "opened": opened,
        "alive": alive,
        "failed": failures,
        "seconds": seconds,
        "first_error": first_error,
    }


MODES: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "mint": mint,
    "handshake": handshake,
    "pingpong": pingpong,
    "hold": hold,
}


def main() -> int:
    raise_nofile()
    spec = json.loads(sys.stdin.readline())
    result: dict[str, Any] = uvloop.run(MODES[spec["mode"]](spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
