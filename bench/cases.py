"""The five cases: each measured against its baseline in the same run, repetitions interleaved."""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.apikeys import create_key
from app.keys import KeySet, SigningKey
from app.rotation import ensure_keys
from app.tickets import issue, verify
from bench.procs import ROOT, Server, rss_bytes
from bench.wire import post_request

ISSUER = AUDIENCE = "opper-realtime"
PROJECT = "proj_bench"
TICKET_MAX_BYTES = 6144
MINT_BODY = {
    "config": {"instructions": "You are a friendly voice assistant. Keep answers short.", "voice": "alloy"},
    "ttl_seconds": 60,
}
# A realistic bound config: ~1 KB of instructions and one tool with a JSON schema.
INSTRUCTIONS = (
    "You are the voice assistant of a small bookshop. Greet the caller, ask how you can help, and keep "
    "every answer under three sentences. You can look up whether a title is in stock with the "
    "check_stock tool; call it with the title and, when the caller gives one, the author. Never invent "
    "stock levels, prices or delivery dates: if the tool does not say, tell the caller you will ask a "
    "colleague and take their phone number. Speak plainly, avoid jargon, and spell out numbers. If the "
    "caller asks for something unrelated to books, say politely that you can only help with the shop. "
    "Opening hours are nine to six on weekdays and ten to four on Saturdays; the shop is closed on "
    "Sundays and public holidays. Orders over forty euros ship free within the country. Returns are "
    "accepted within thirty days with a receipt. If the caller is upset, apologise once, summarise "
    "the problem, and offer to pass the matter to the manager. End every call by asking whether there "
    "is anything else you can do."
)
BOUND_CONFIG: dict[str, Any] = {
    "instructions": INSTRUCTIONS,
    "tools": [
        {
            "name": "check_stock",
            "description": "Whether a title is in stock, and how many copies.",
            "parameters": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "author": {"type": "string"}},
                "required": ["title"],
            },
        }
    ],
}


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure."""

    quick: bool
    repetitions: int
    duration: float
    concurrency: int
    sessions: int
    workdir: Path


@dataclass
class Row:
    """One line of the results table: a ratio (or figure) with its target."""

    case: str
    what: str
    value: float
    unit: str
    target: str
    met: bool | None
    detail: str = ""


@dataclass
class CaseResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# Helpers -------------------------------------------------------------------------------


def per_call(fn: Callable[[], object], *, number: int, repeat: int) -> float:
    """Seconds per call: the best of `repeat` runs of `number` calls (timeit's advice)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load generator process to completion and return its result."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(spec) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def new_keys(workdir: Path, name: str) -> tuple[Path, str]:
    """A fresh keys directory with a signing key and one runtime API key for PROJECT."""
    directory = workdir / f"keys-{name}"
    now = int(time.time())
    ensure_keys(directory, now=now - 60)
    api_key, _ = create_key(directory / "api_keys.json", project=PROJECT, kind="runtime", now=now)
    return directory, api_key


def service(plan: Plan, name: str, keys_dir: Path, **env: str) -> Server:
    return Server(
        "app.serve",
        env={"REALTIME_KEYS_DIR": str(keys_dir), **env},
        log_path=plan.workdir / f"{name}.log",
    )


def signer_of(keys_dir: Path) -> SigningKey:
    signer = KeySet.load(keys_dir).signer
    assert signer is not None and signer.private_key is not None
    return signer


def mint_tickets(signer: SigningKey, count: int, config: dict[str, Any] | None = None) -> list[str]:
    now = time.time()
    return [
        issue(
            signer,
            project=PROJECT,
            config=config or {},
            locked=(),
            ttl=300,
            now=now,
            issuer=ISSUER,
            audience=AUDIENCE,
            max_bytes=TICKET_MAX_BYTES,
        ).token
        for _ in range(count)
    ]


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median rate and CPU per operation (µs) over repetitions, with every run kept."""
    ops = [max(run["ops"], 1) for run in runs]
    return {
        "rate": median_of(runs, "rate"),
        "server_cpu_us": statistics.median(
            run["server_cpu"] / n * 1e6 for run, n in zip(runs, ops, strict=True)
        ),
        "client_cpu_us": statistics.median(
            run["client_cpu"] / n * 1e6 for run, n in zip(runs, ops, strict=True)
        ),
        "errors": sum(run["errors"] for run in runs),
        "runs": runs,
    }


def us(seconds: float) -> float:
    return seconds * 1e6


# 1. Mint ------------------------------------------------------------------------------------


def case_mint(plan: Plan) -> CaseResult:
    keys_dir, api_key = new_keys(plan.workdir, "mint")
    body = json.dumps(MINT_BODY)
    headers = {"Authorization": f"Bearer {api_key}"}
    with service(plan, "mint", keys_dir) as server:
        sample = _one_post(server.port, body, headers)
        template = plan.workdir / "mint-response.json"
        template.write_text(sample)
        bare = Server(
            "bench.bare",
            env={},
            log_path=plan.workdir / "bare-mint.log",
            args=("--response-file", str(template)),
        )
        with bare:
            runs: dict[str, list[dict[str, Any]]] = {"mint": [], "bare": []}
            for repetition in range(plan.repetitions):
                order = [("bare", bare), ("mint", server)]
                for label, target in order if repetition % 2 == 0 else order[::-1]:
                    runs[label].append(
                        loadgen(
                            {
                                "mode": "mint",
                                "port": target.port,
                                "path": "/v3/realtime-sessions",
                                "body": body,
                                "headers": headers,
                                "concurrency": plan.concurrency,
                                "duration": plan.duration,
                                "server_pids": [target.pid],
                            }
                        )
                    )
    token = json.loads(sample)["client_secret"]
    private = signer_of(keys_dir).private_key
    assert private is not None
    signing_input = token.rsplit(".", 1)[0].encode()
    number = 500 if plan.quick else 2000
    sign = per_call(lambda: private.sign(signing_input), number=number, repeat=5)
    mint, base = summary(runs["mint"]), summary(runs["bare"])
    added = 1 / mint["rate"] - 1 / base["rate"]
    ratio = added / sign
    result = CaseResult("mint")
    result.data = {
        "mint": mint,
        "bare": base,
        "added_us": us(added),
        "added_server_cpu_us": mint["server_cpu_us"] - base["server_cpu_us"],
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
            f"bare Starlette: {base['rate']:.0f} req/s",
        ),
        Row(
            "1. Mint",
            "added cost per request",
            us(added),
            "µs",
            "",
            None,
            f"raw Ed25519 sign: {us(sign):.1f} µs; server CPU per request "
            f"{mint['server_cpu_us']:.0f} vs {base['server_cpu_us']:.0f} µs, client CPU "
            f"{mint['client_cpu_us']:.0f} vs {base['client_cpu_us']:.0f} µs",
        ),
        Row("1. Mint", "added cost / raw sign", ratio, "×", "≤ 2", ratio <= 2),
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
    keys_dir, _ = new_keys(plan.workdir, "redeem")
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
    bare = Server("bench.bare", env={}, log_path=plan.workdir / "bare-ws.log")
    targets = {"bare": bare, "memory": memory, "redis": redis}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    estimate = 2000.0
    with memory, redis, bare:
        for repetition in range(plan.repetitions):
            order = list(targets) if repetition % 2 == 0 else list(targets)[::-1]
            for label in order:
                target = targets[label]
                count = int(estimate * 1.5 * plan.duration) + 200
                tickets = plan.workdir / f"tickets-{label}-{repetition}.txt"
                tickets.write_text("\n".join(mint_tickets(signer, count)))
                run = loadgen(
                    {
                        "mode": "handshake",
                        "port": target.port,
                        "tickets_file": str(tickets),
                        "expect": "session.start" if label == "bare" else "session.started",
                        "concurrency": plan.concurrency,
                        "duration": plan.duration,
                        "server_pids": [target.pid],
                    }
                )
                tickets.unlink()
                if run["ops"] == 0:
                    raise RuntimeError(f"no handshake succeeded against {label}: {run['first_error']}")
                estimate = max(estimate, run["rate"])
                runs[label].append(run)
    token = mint_tickets(signer, 1)[0]
    head, _, signature = token.rpartition(".")
    raw = _raw_verify(signer, head, signature, plan)
    base, mem, red = summary(runs["bare"]), summary(runs["memory"]), summary(runs["redis"])
    added = 1 / mem["rate"] - 1 / base["rate"]
    redis_extra = 1 / red["rate"] - 1 / mem["rate"]
    ratio = added / raw
    result = CaseResult("redemption")
    result.data = {
        "bare": base,
        "memory": mem,
        "redis": red,
        "added_us": us(added),
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
            f"bare Starlette WebSocket: {base['rate']:.0f}/s",
        ),
        Row(
            "2. Redemption",
            "added cost per handshake",
            us(added),
            "µs",
            "",
            None,
            f"raw Ed25519 verify: {us(raw):.1f} µs; server CPU per handshake "
            f"{mem['server_cpu_us']:.0f} vs {base['server_cpu_us']:.0f} µs, client CPU "
            f"{mem['client_cpu_us']:.0f} vs {base['client_cpu_us']:.0f} µs",
        ),
        Row("2. Redemption", "added cost / raw verify", ratio, "×", "≤ 2.5", ratio <= 2.5),
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
    import base64

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
    now = time.time()

    def full() -> object:
        return verify(
            token, keys, issuer=ISSUER, audience=AUDIENCE, leeway=5, max_bytes=TICKET_MAX_BYTES, now=now
        )

    head, _, signature = token.rpartition(".")
    number = 500 if plan.quick else 2000
    raw = _raw_verify(signer, head, signature, plan)
    checked = per_call(full, number=number, repeat=5)
    ratio = checked / raw
    result = CaseResult("verify")
    result.data = {"verify_us": us(checked), "raw_verify_us": us(raw), "ticket_bytes": len(token)}
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
    ]
    return result


# 4. Relay ---------------------------------------------------------------------------------------


def case_relay(plan: Plan) -> CaseResult:
    upstream_keys, upstream_key = new_keys(plan.workdir, "upstream")
    edge_keys, edge_key = new_keys(plan.workdir, "edge")
    upstream = service(plan, "upstream", upstream_keys).start()
    try:
        edge = service(
            plan,
            "edge",
            edge_keys,
            REALTIME_UPSTREAM="relay",
            REALTIME_UPSTREAM_URL=upstream.ws_url,
            REALTIME_UPSTREAM_API_KEY=upstream_key,
        )
        with edge:
            targets = {
                "direct": (upstream, upstream_key, [upstream.pid]),
                "relay": (edge, edge_key, [edge.pid, upstream.pid]),
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for repetition in range(plan.repetitions):
                order = list(targets) if repetition % 2 == 0 else list(targets)[::-1]
                for label in order:
                    server, key, pids = targets[label]
                    runs[label].append(
                        loadgen(
                            {
                                "mode": "pingpong",
                                "port": server.port,
                                "headers": {"Authorization": f"Bearer {key}"},
                                "ping": {"type": "audio.commit"},
                                "answer": "error",
                                "warmup": 200,
                                "rounds": 300 if plan.quick else 5000,
                                "sessions": plan.sessions,
                                "duration": plan.duration,
                                "server_pids": pids,
                            }
                        )
                    )
    finally:
        upstream.stop()
    direct, relay = summary(runs["direct"]), summary(runs["relay"])
    for name, values in (("direct", direct), ("relay", relay)):
        values["p50_ms"] = median_of(runs[name], "p50") * 1e3
        values["p99_ms"] = median_of(runs[name], "p99") * 1e3
    throughput = relay["rate"] / direct["rate"]
    added_p50 = relay["p50_ms"] - direct["p50_ms"]
    added_p99 = relay["p99_ms"] - direct["p99_ms"]
    result = CaseResult("relay")
    result.data = {"direct": direct, "relay": relay, "added_p50_ms": added_p50, "added_p99_ms": added_p99}
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
        Row("4. Relay", "relay / direct throughput", throughput, "×", "≥ 0.8", throughput >= 0.8),
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
            "< 1",
            added_p99 < 1.0,
            f"direct p99 {direct['p99_ms']:.3f} ms",
        ),
    ]
    return result


# 5. Scale ---------------------------------------------------------------------------------------


def case_scale(plan: Plan, count: int) -> CaseResult:
    keys_dir, api_key = new_keys(plan.workdir, "scale")
    with service(plan, "scale", keys_dir) as server:
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
            "< 64",
            per_session < 64,
            f"RSS {before / 2**20:.1f} → {after / 2**20:.1f} MiB",
        ),
        Row(
            "5. Scale",
            "sessions held by one process",
            float(alive),
            "sessions",
            f"{count}",
            alive >= count,
            f"opened in {final['seconds']:.1f} s",
        ),
    ]
    return result
