"""Cases 1 to 3: the mint, the redemption handshake and `verify()`, each beside its baseline and floor."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from typing import Any

from app.keys import KeySet, SigningKey
from app.sealkeys import SEAL_FILE, SealKeySet
from app.tickets import issue, verify
from bench.common import (
    AUDIENCE,
    BOUND_CONFIG,
    ISSUER,
    MINT_BODY,
    PROJECT,
    TICKET_MAX_BYTES,
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
    per_call,
    sealer_of,
    service,
    signer_of,
    summary,
    us,
)
from bench.procs import Server
from bench.wire import post_request

# 1. Mint ------------------------------------------------------------------------------------


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
        ):
            _one_post(naive.port, body, headers)  # the peer answers too, before anything is timed
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
                {"bare": base, "floor": floor, "peer": naive, "plain": plain, "mint": server},
                lambda name, target: loadgen({**spec, "port": target.port, "server_pids": [target.pid]}),
            )
    token = json.loads(sample)["client_secret"]
    private = signer_of(keys_dir).private_key
    assert private is not None
    signing_input = token.rsplit(".", 1)[0].encode()
    number = 500 if plan.quick else 2000
    sign = per_call(lambda: private.sign(signing_input), number=number, repeat=5)
    mint, base_runs, floor_runs = summary(runs["mint"]), summary(runs["bare"]), summary(runs["floor"])
    peer_runs, plain_runs = summary(runs["peer"]), summary(runs["plain"])
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


# 2. Redemption -------------------------------------------------------------------------------


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
        runs = interleaved(plan, targets, measure)
    token = mint_tickets(signer, 1)[0]
    head, _, signature = token.rpartition(".")
    raw = _raw_verify(signer, head, signature, plan)
    base, floor = summary(runs["bare"]), summary(runs["floor"])
    mem, red, sealed = summary(runs["memory"]), summary(runs["redis"]), summary(runs["sealed"])
    peer_runs = summary(runs["peer"])
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
            "handshakes (redis://)",
            red["rate"],
            "/s",
            "",
            None,
            f"store round trip adds {us(redis_extra):.0f} µs",
        ),
    ]
    return result


def _raw_verify(signer: SigningKey, head: str, signature: str, plan: Plan) -> float:
    raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    signed = head.encode()
    public = signer.public_key
    number = 500 if plan.quick else 2000
    return per_call(lambda: public.verify(raw_signature, signed), number=number, repeat=5)


# 3. Verification ------------------------------------------------------------------------------


def case_verify(plan: Plan) -> CaseResult:
    keys_dir, _ = new_keys(plan.workdir, "verify")
    keys = KeySet.load(keys_dir)
    signer = signer_of(keys_dir)
    token = issue(
        signer,
        project=PROJECT,
        config=BOUND_CONFIG,
        locked=("instructions", "tools"),
        ttl=300,
        now=time.time(),
        issuer=ISSUER,
        audience=AUDIENCE,
        max_bytes=TICKET_MAX_BYTES,
    ).token
    # The same ticket sealed (the minter's default): decrypt, then the same verification.
    seal_keys = SealKeySet.load(keys_dir / SEAL_FILE)
    sealed = issue(
        signer,
        project=PROJECT,
        config=BOUND_CONFIG,
        locked=("instructions", "tools"),
        ttl=300,
        now=time.time(),
        issuer=ISSUER,
        audience=AUDIENCE,
        max_bytes=TICKET_MAX_BYTES,
        seal=seal_keys.sealer,
    ).token
    now = time.time()

    def full() -> object:
        return verify(
            token, keys, issuer=ISSUER, audience=AUDIENCE, leeway=5, max_bytes=TICKET_MAX_BYTES, now=now
        )

    def opened() -> object:
        return verify(
            sealed,
            keys,
            seal_keys=seal_keys,
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway=5,
            max_bytes=TICKET_MAX_BYTES,
            now=now,
        )

    head, _, signature = token.rpartition(".")
    number = 500 if plan.quick else 2000
    raw = _raw_verify(signer, head, signature, plan)
    checked = per_call(full, number=number, repeat=5)
    checked_sealed = per_call(opened, number=number, repeat=5)
    ratio, ratio_sealed = checked / raw, checked_sealed / raw
    result = CaseResult("verify")
    result.data = {
        "verify_us": us(checked),
        "verify_sealed_us": us(checked_sealed),
        "raw_verify_us": us(raw),
        "ticket_bytes": len(token),
        "sealed_ticket_bytes": len(sealed),
    }
    result.rows = [
        Row(
            "3. Verification",
            "verify() per ticket",
            us(checked),
            "µs",
            "",
            None,
            f"{len(token)}-byte ticket; raw verify {us(raw):.1f} µs",
        ),
        Row("3. Verification", "verify() / raw verify", ratio, "×", "≤ 2.5", ratio <= 2.5),
        Row(
            "3. Verification",
            "verify() of a sealed ticket",
            us(checked_sealed),
            "µs",
            "",
            None,
            f"{len(sealed)}-byte sealed ticket (no `cfz`): decrypt, then the same checks",
        ),
        Row("3. Verification", "verify() sealed / raw verify", ratio_sealed, "×", "", None),
    ]
    return result
