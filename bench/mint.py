"""Case 1: the mint (`POST /v3/realtime-sessions`) beside its baseline, floor and a naive peer."""

from __future__ import annotations

import json

from bench.common import (
    MINT_BODY,
    CaseResult,
    Plan,
    Row,
    at_least,
    at_most,
    bare,
    interleaved,
    loadgen,
    new_keys,
    peer,
    per_call,
    service,
    signer_of,
    summary,
    us,
)
from bench.wire import post_request


def case_mint(plan: Plan) -> CaseResult:
    keys_dir, api_key = new_keys(plan.workdir, "mint")
    body = json.dumps(MINT_BODY)
    headers = {"Authorization": f"Bearer {api_key}"}
    plain_service = service(plan, "mint-plain", keys_dir, REALTIME_SEALED_TICKETS="false")
    with service(plan, "mint", keys_dir) as server, plain_service as plain:
        sample = _one_post(server.port, body, headers)
        template = plan.workdir / "mint-response.json"
        template.write_text(sample)
        answers = ("--response-file", str(template))
        with (
            bare(plan, "bare-mint", *answers) as base,
            bare(plan, "floor-mint", *answers, "--keys-dir", str(keys_dir)) as floor,
            peer(plan, "peer-mint", keys_dir, api_key) as naive,
            peer(plan, "peer-stock-mint", keys_dir, api_key, stock=True) as stock_peer,
        ):
            _one_post(naive.port, body, headers)  # the peers answer too, before anything is timed
            _one_post(stock_peer.port, body, headers)
            spec = {
                "mode": "mint",
                "path": "/v3/realtime-sessions",
                "body": body,
                "headers": headers,
                "concurrency": plan.concurrency,
                "duration": plan.duration,
            }
            runs = interleaved(
                plan,
                {
                    "bare": base,
                    "floor": floor,
                    "peer": naive,
                    "stock": stock_peer,
                    "plain": plain,
                    "mint": server,
                },
                lambda name, target: loadgen({**spec, "port": target.port, "server_pids": [target.pid]}),
            )
    token = json.loads(sample)["client_secret"]
    private = signer_of(keys_dir).private_key
    assert private is not None
    signing_input = token.rsplit(".", 1)[0].encode()
    number = 500 if plan.quick else 2000
    sign = per_call(lambda: private.sign(signing_input), number=number, repeat=5)
    mint, base_runs, floor_runs = summary(runs["mint"]), summary(runs["bare"]), summary(runs["floor"])
    peer_runs, plain_runs, stock = summary(runs["peer"]), summary(runs["plain"]), summary(runs["stock"])
    added = 1 / mint["rate"] - 1 / base_runs["rate"]
    floor_added = 1 / floor_runs["rate"] - 1 / base_runs["rate"]
    peer_added = 1 / peer_runs["rate"] - 1 / base_runs["rate"]
    ratio, floor_ratio = added / sign, floor_added / sign
    vs_peer = mint["rate"] / peer_runs["rate"]
    vs_floor = added / floor_added
    result = CaseResult("mint")
    result.data = {
        "mint": mint,
        "bare": base_runs,
        "floor": floor_runs,
        "peer": peer_runs,
        "plain": plain_runs,
        "peer_stock": stock,
        "added_us": us(added),
        "floor_added_us": us(floor_added),
        "peer_added_us": us(peer_added),
        "added_server_cpu_us": mint["server_cpu_us"] - base_runs["server_cpu_us"],
        "raw_sign_us": us(sign),
        "request_bytes": len(post_request("127.0.0.1", 1, "/v3/realtime-sessions", body.encode(), headers)),
        "response_bytes": len(sample),
    }
    result.rows = [
        Row(
            "1. Mint",
            "mint rate",
            mint["rate"],
            "req/s",
            "",
            None,
            f"bare Starlette: {base_runs['rate']:.0f} req/s; naive peer: {peer_runs['rate']:.0f} req/s",
        ),
        Row(
            "1. Mint",
            "mint / naive peer throughput",
            vs_peer,
            "×",
            *at_least(vs_peer, 1.2),
            f"server CPU per request {mint['server_cpu_us']:.0f} vs the peer's "
            f"{peer_runs['server_cpu_us']:.0f} µs",
        ),
        Row(
            "1. Mint",
            "mint with plain tickets / naive peer",
            plain_runs["rate"] / peer_runs["rate"],
            "×",
            "",
            None,
            f"REALTIME_SEALED_TICKETS=false, a signed JWS like the peer's: {plain_runs['rate']:.0f} req/s, "
            f"server CPU per request {plain_runs['server_cpu_us']:.0f} µs",
        ),
        Row(
            "1. Mint",
            "mint / naive peer on stock uvicorn",
            mint["rate"] / stock["rate"],
            "×",
            "reported",
            None,
            f"the same peer run as `uvicorn app:app` runs it (uvicorn's own protocol classes, no "
            f"collector tuning): {stock['rate']:.0f} req/s, server CPU per request "
            f"{stock['server_cpu_us']:.0f} µs",
        ),
        Row(
            "1. Mint",
            "added cost per request",
            us(added),
            "µs",
            "",
            None,
            f"raw Ed25519 sign: {us(sign):.1f} µs; naive peer's added cost {us(peer_added):.0f} µs; "
            f"server CPU per request {mint['server_cpu_us']:.0f} vs {base_runs['server_cpu_us']:.0f} µs "
            f"(bare), client CPU {mint['client_cpu_us']:.0f} vs {base_runs['client_cpu_us']:.0f} µs",
        ),
        Row(
            "1. Mint",
            "added cost / floor's added cost",
            vs_floor,
            "×",
            *at_most(vs_floor, 1.5),
            f"floor: the bare endpoint signing the same bytes and nothing else, {floor_runs['rate']:.0f} "
            f"req/s, added {us(floor_added):.0f} µs",
        ),
        Row("1. Mint", "added cost / raw sign", ratio, "×", "", None, f"the floor's: {floor_ratio:.2f}×"),
    ]
    return result


def _one_post(port: int, body: str, headers: dict[str, str]) -> str:
    import httpx

    response = httpx.post(
        f"http://127.0.0.1:{port}/v3/realtime-sessions", content=body, headers=headers, timeout=10
    )
    response.raise_for_status()
    return response.text
