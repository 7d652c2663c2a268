"""Cases 4 and 5: the relay beside a direct connection, and how many idle sessions one process holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    CaseResult,
    Plan,
    Row,
    at_least,
    bare,
    below,
    interleaved,
    loadgen,
    median_of,
    new_keys,
    service,
    summary,
)
from bench.procs import ROOT, Server, rss_bytes

# 4. Relay ---------------------------------------------------------------------------------------


# The relay case measures the relay, not the per-session rate limit (200 frames/s by default),
# which its closed loops would otherwise hit within a second.
UNLIMITED = {"REALTIME_MAX_FRAMES_PER_SECOND": "1000000", "REALTIME_MAX_BYTES_PER_SECOND": str(1 << 40)}


def case_relay(plan: Plan) -> CaseResult:
    upstream_keys, upstream_key = new_keys(plan.workdir, "upstream")
    edge_keys, edge_key = new_keys(plan.workdir, "edge")
    with service(plan, "upstream", upstream_keys, **UNLIMITED) as upstream:
        edge = service(
            plan,
            "edge",
            edge_keys,
            REALTIME_UPSTREAM="relay",
            REALTIME_UPSTREAM_URL=upstream.ws_url,
            REALTIME_UPSTREAM_API_KEY=upstream_key,
            **UNLIMITED,
        )
        floor = bare(
            plan, "floor-relay", "--relay-to", upstream.ws_url, env={"BENCH_RELAY_KEY": upstream_key}
        )
        with edge, floor:
            targets = {
                "direct": (upstream, upstream_key, [upstream.pid]),
                "floor": (floor, "", [floor.pid, upstream.pid]),
                "relay": (edge, edge_key, [edge.pid, upstream.pid]),
            }

            def measure(name: str, target: tuple[Server, str, list[int]]) -> dict[str, Any]:
                server, key, pids = target
                return loadgen(
                    {
                        "mode": "pingpong",
                        "port": server.port,
                        "headers": {"Authorization": f"Bearer {key}"} if key else {},
                        "ping": {"type": "audio.commit"},
                        "answer": "error",
                        "warmup": 200,
                        "rounds": 300 if plan.quick else 5000,
                        "sessions": plan.sessions,
                        "duration": plan.duration,
                        "server_pids": pids,
                    }
                )

            runs = interleaved(plan, targets, measure)
    direct, floor_runs, relay = summary(runs["direct"]), summary(runs["floor"]), summary(runs["relay"])
    for name, values in (("direct", direct), ("floor", floor_runs), ("relay", relay)):
        values["p50_ms"] = median_of(runs[name], "p50") * 1e3
        values["p99_ms"] = median_of(runs[name], "p99") * 1e3
    throughput = relay["rate"] / direct["rate"]
    vs_floor = relay["rate"] / floor_runs["rate"]
    added_p50 = relay["p50_ms"] - direct["p50_ms"]
    added_p99 = relay["p99_ms"] - direct["p99_ms"]
    result = CaseResult("relay")
    result.data = {
        "direct": direct,
        "floor": floor_runs,
        "relay": relay,
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
    }
    result.rows = [
        Row(
            "4. Relay",
            "round trips through the relay",
            relay["rate"],
            "/s",
            "",
            None,
            f"direct: {direct['rate']:.0f}/s; {plan.sessions} sessions; server CPU per round trip "
            f"{relay['server_cpu_us']:.0f} (edge + upstream) vs {direct['server_cpu_us']:.0f} µs, "
            f"client CPU {relay['client_cpu_us']:.0f} vs {direct['client_cpu_us']:.0f} µs",
        ),
        Row(
            "4. Relay",
            "relay / pass-through floor throughput",
            vs_floor,
            "×",
            *at_least(vs_floor, 0.95),
            f"floor: a bare Starlette WebSocket passing frames unchanged to the same upstream, no "
            f"checks: {floor_runs['rate']:.0f}/s, server CPU per round trip "
            f"{floor_runs['server_cpu_us']:.0f} µs",
        ),
        Row(
            "4. Relay",
            "relay / direct throughput",
            throughput,
            "×",
            "",
            None,
            f"the floor's: {floor_runs['rate'] / direct['rate']:.2f}×",
        ),
        Row(
            "4. Relay",
            "added p50 latency",
            added_p50,
            "ms",
            "",
            None,
            f"direct p50 {direct['p50_ms']:.3f} ms",
        ),
        Row(
            "4. Relay",
            "added p99 latency",
            added_p99,
            "ms",
            *below(added_p99, 1.0),
            f"direct p99 {direct['p99_ms']:.3f} ms",
        ),
    ]
    return result


# 5. Scale ---------------------------------------------------------------------------------------


def case_scale(plan: Plan, count: int) -> CaseResult:
    keys_dir, api_key = new_keys(plan.workdir, "scale")
    # The connection cap (REALTIME_MAX_CONNECTIONS, 10,000 by default) is raised above what the case
    # opens: it measures what one process holds, and the warm-up sessions count as connections too.
    with service(plan, "scale", keys_dir, REALTIME_MAX_CONNECTIONS=str(count + 1000)) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            spec = {
                "mode": "hold",
                "port": server.port,
                "headers": {"Authorization": f"Bearer {api_key}"},
                "warm": 20,
                "count": count,
                "concurrency": 64,
            }
            process.stdin.write(json.dumps(spec) + "\n")
            process.stdin.flush()
            json.loads(process.stdout.readline())
            time.sleep(0.5)
            before = rss_bytes(server.pid)
            process.stdin.write("\n")
            process.stdin.flush()
            ready = json.loads(process.stdout.readline())
            time.sleep(1.0)
            after = rss_bytes(server.pid)
            process.stdin.write("\n")
            process.stdin.flush()
            final = json.loads(process.stdout.readline())
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    opened = int(ready["ready"])
    alive = int(ready["alive"])
    per_session = (after - before) / max(opened, 1) / 1024
    result = CaseResult("scale")
    result.data = {
        "asked": count,
        "opened": opened,
        "alive": alive,
        "failed": final["failed"],
        "first_error": final["first_error"],
        "open_seconds": final["seconds"],
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "kib_per_session": per_session,
    }
    result.rows = [
        Row(
            "5. Scale",
            "memory per idle session",
            per_session,
            "KiB",
            *below(per_session, 32),
            f"RSS {before / 2**20:.1f} → {after / 2**20:.1f} MiB",
        ),
        Row(
            "5. Scale",
            "sessions held by one process",
            float(alive),
            "sessions",
            *at_least(alive, count),
            f"opened in {final['seconds']:.1f} s",
        ),
    ]
    return result
