"""Case 2: the redemption handshake (`GET /v3/realtime`) beside its baseline, floor and a naive peer."""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any

from bench.common import (
    RESTART_WINDOW_SECONDS,
    CaseResult,
    Plan,
    Row,
    at_least,
    at_most,
    bare,
    interleaved,
    loadgen,
    mint_tickets,
    new_keys,
    peer,
    sealer_of,
    service,
    signer_of,
    summary,
    us,
)
from bench.procs import Server
from bench.verification import raw_verify


def case_redemption(plan: Plan) -> CaseResult:
    keys_dir, api_key = new_keys(plan.workdir, "redeem")
    signer = signer_of(keys_dir)
    prefix = f"bench:{secrets.token_hex(4)}:"
    memory = service(plan, "redeem-memory", keys_dir)
    redis = service(
        plan,
        "redeem-redis",
        keys_dir,
        REALTIME_REPLAY_URL="redis://127.0.0.1:6379/0",
        REALTIME_REPLAY_PREFIX=prefix,
    )
    targets = {
        "bare": bare(plan, "bare-ws"),
        "floor": bare(plan, "floor-ws", "--keys-dir", str(keys_dir)),
        "peer": peer(plan, "peer-ws", keys_dir, api_key),
        "stock": peer(plan, "peer-stock-ws", keys_dir, api_key, stock=True),
        "memory": memory,
        "sealed": memory,  # the same process, presented sealed tickets (what its minter issues)
        "redis": redis,
    }
    sealer = sealer_of(keys_dir)
    estimate = 2000.0

    def measure(name: str, target: Server) -> dict[str, Any]:
        nonlocal estimate
        count = int(estimate * 1.5 * plan.duration) + 200
        tickets = plan.workdir / f"tickets-{name}.txt"
        seal = sealer if name == "sealed" else None
        tickets.write_text("\n".join(mint_tickets(signer, count, seal=seal)))
        run = loadgen(
            {
                "mode": "handshake",
                "port": target.port,
                "tickets_file": str(tickets),
                "expect": "session.start" if name in ("bare", "floor") else "session.started",
                "concurrency": plan.concurrency,
                "duration": plan.duration,
                "server_pids": [target.pid],
            }
        )
        tickets.unlink()
        if run["ops"] == 0:
            raise RuntimeError(f"no handshake succeeded against {name}: {run['first_error']}")
        estimate = max(estimate, run["rate"])
        return run

    with contextlib.ExitStack() as started:
        for target in targets.values():
            started.enter_context(target)
        time.sleep(RESTART_WINDOW_SECONDS)  # the bench mints its own tickets
        runs = interleaved(plan, targets, measure)
    token = mint_tickets(signer, 1)[0]
    head, _, signature = token.rpartition(".")
    raw = raw_verify(signer, head, signature, plan)
    base, floor = summary(runs["bare"]), summary(runs["floor"])
    mem, red, sealed = summary(runs["memory"]), summary(runs["redis"]), summary(runs["sealed"])
    peer_runs, stock = summary(runs["peer"]), summary(runs["stock"])
    added = 1 / mem["rate"] - 1 / base["rate"]
    floor_added = 1 / floor["rate"] - 1 / base["rate"]
    peer_added = 1 / peer_runs["rate"] - 1 / base["rate"]
    vs_peer = mem["rate"] / peer_runs["rate"]
    vs_floor = added / floor_added
    redis_extra = 1 / red["rate"] - 1 / mem["rate"]
    ratio = added / raw
    result = CaseResult("redemption")
    result.data = {
        "bare": base,
        "floor": floor,
        "peer": peer_runs,
        "peer_stock": stock,
        "memory": mem,
        "sealed": sealed,
        "redis": red,
        "added_us": us(added),
        "floor_added_us": us(floor_added),
        "peer_added_us": us(peer_added),
        "added_server_cpu_us": mem["server_cpu_us"] - base["server_cpu_us"],
        "redis_extra_us": us(redis_extra),
        "redis_extra_server_cpu_us": red["server_cpu_us"] - mem["server_cpu_us"],
        "raw_verify_us": us(raw),
    }
    result.rows = [
        Row(
            "2. Redemption",
            "handshakes (memory://)",
            mem["rate"],
            "/s",
            "",
            None,
            f"bare Starlette WebSocket: {base['rate']:.0f}/s; naive peer: {peer_runs['rate']:.0f}/s",
        ),
        Row(
            "2. Redemption",
            "handshakes / naive peer (memory://)",
            vs_peer,
            "×",
            "",
            None,
            f"server CPU per handshake {mem['server_cpu_us']:.0f} vs the peer's "
            f"{peer_runs['server_cpu_us']:.0f} µs",
        ),
        Row(
            "2. Redemption",
            "added cost per handshake",
            us(added),
            "µs",
            "",
            None,
            f"raw Ed25519 verify: {us(raw):.1f} µs; naive peer's added cost {us(peer_added):.0f} µs; "
            f"server CPU per handshake {mem['server_cpu_us']:.0f} vs {base['server_cpu_us']:.0f} µs "
            f"(bare), client CPU {mem['client_cpu_us']:.0f} vs {base['client_cpu_us']:.0f} µs",
        ),
        Row(
            "2. Redemption",
            "added cost / floor's added cost",
            vs_floor,
            "×",
            *at_most(vs_floor, 1.5),
            f"floor: the bare WebSocket verifying the ticket's signature and nothing else, "
            f"{floor['rate']:.0f}/s, added {us(floor_added):.0f} µs",
        ),
        Row(
            "2. Redemption",
            "added cost / raw verify",
            ratio,
            "×",
            "",
            None,
            f"the floor's: {floor_added / raw:.2f}×",
        ),
        Row(
            "2. Redemption",
            "handshakes with sealed tickets / naive peer (memory://)",
            sealed["rate"] / peer_runs["rate"],
            "×",
            *at_least(sealed["rate"] / peer_runs["rate"], 1.3),
            f"the minter's default ticket (decrypt, then the same checks): {sealed['rate']:.0f}/s, "
            f"server CPU per handshake {sealed['server_cpu_us']:.0f} µs; the peer reads a plain JWS",
        ),
        Row(
            "2. Redemption",
            "handshakes with sealed tickets / naive peer on stock uvicorn",
            sealed["rate"] / stock["rate"],
            "×",
            "reported",
            None,
            f"the same peer run as `uvicorn app:app` runs it (uvicorn's own protocol classes, no "
            f"collector tuning): {stock['rate']:.0f}/s, server CPU per handshake "
            f"{stock['server_cpu_us']:.0f} µs",
        ),
        Row(
            "2. Redemption",
            "handshakes (redis://)",
            red["rate"],
            "/s",
            "",
            None,
            f"store round trip adds {us(redis_extra):.0f} µs",
        ),
    ]
    return result
