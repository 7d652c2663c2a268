"""Case 9: the handshake with revocation checks (and on Redis, leases) beside the edge before them.

The baseline is the service as it was before fleet control (`BENCH_BASELINE_REF`, default the last
commit before it), extracted with `git archive` and run from its own directory; both edges verify the
same sealed tickets, which carry `akid`, while the new edge holds 100 revocations of other keys and
projects. Run alone: `python -m bench --only fleet`.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.tickets.apikeys import create_key
from bench.common import (
    RESTART_WINDOW_SECONDS,
    CaseResult,
    Plan,
    Row,
    at_most,
    interleaved,
    loadgen,
    mint_tickets,
    new_keys,
    sealer_of,
    service,
    signer_of,
    summary,
)
from bench.procs import ROOT, Server

#: The last commit before revocations, leases and the admin API.
BASELINE_REF = "3d38725"
REVOCATIONS = 100
REDIS_URL = "redis://127.0.0.1:6379/0"


def baseline_tree(workdir: Path, ref: str) -> Path:
    """The `app` package as it was at `ref`, in a directory of its own."""
    target = workdir / f"baseline-{ref}"
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "app"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def _revoke_others(server: Server, key: str) -> None:
    """Put REVOCATIONS revocations in force that the benchmark's tickets do not match."""
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        for number in range(REVOCATIONS):
            body = (
                {"project": f"proj_other_{number}"} if number % 2 else {"api_key_id": f"key_other_{number}"}
            )
            response = client.post(
                "/v3/admin/revocations", headers={"Authorization": f"Bearer {key}"}, json=body
            )
            response.raise_for_status()


def case_fleet(plan: Plan) -> CaseResult:
    ref = os.environ.get("BENCH_BASELINE_REF", BASELINE_REF)
    keys_dir, _ = new_keys(plan.workdir, "fleet")
    signer, sealer = signer_of(keys_dir), sealer_of(keys_dir)
    _, entry = create_key(keys_dir / "api_keys.json", project="proj_bench", kind="runtime", now=0)
    admin, _ = create_key(keys_dir / "api_keys.json", project="*", kind="management", now=0)
    old = baseline_tree(plan.workdir, ref)
    prefix = f"bench:{secrets.token_hex(4)}:"
    env = {"REALTIME_KEYS_DIR": str(keys_dir)}
    redis_env = {"REALTIME_REPLAY_URL": REDIS_URL}
    targets = {
        "before": Server("app.serve", env=env, log_path=plan.workdir / "fleet-before.log", cwd=old),
        "after": service(plan, "fleet-after", keys_dir),
        "before-redis": Server(
            "app.serve",
            env={**env, **redis_env, "REALTIME_REPLAY_PREFIX": prefix + "a:"},
            log_path=plan.workdir / "fleet-before-redis.log",
            cwd=old,
        ),
        "after-redis": service(
            plan, "fleet-after-redis", keys_dir, **redis_env, REALTIME_REPLAY_PREFIX=prefix + "b:"
        ),
    }
    estimate = 2000.0

    def measure(name: str, target: Server) -> dict[str, Any]:
        nonlocal estimate
        count = int(estimate * 1.5 * plan.duration) + 200
        tickets = plan.workdir / f"tickets-fleet-{name}.txt"
        tickets.write_text("\n".join(mint_tickets(signer, count, seal=sealer, api_key_id=entry.id)))
        run = loadgen(
            {
                "mode": "handshake",
                "port": target.port,
                "tickets_file": str(tickets),
                "expect": "session.started",
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
        for name in ("after", "after-redis"):
            _revoke_others(targets[name], admin)
        time.sleep(RESTART_WINDOW_SECONDS)  # the bench mints its own tickets
        runs = interleaved(plan, targets, measure)
    before, after = summary(runs["before"]), summary(runs["after"])
    before_redis, after_redis = summary(runs["before-redis"]), summary(runs["after-redis"])
    # Server CPU per handshake, not the rate: on a shared machine the rate follows the neighbours,
    # while the CPU a handshake costs the server is what the revocation checks could add to.
    ratio = after["server_cpu_us"] / before["server_cpu_us"]
    redis_ratio = after_redis["server_cpu_us"] / before_redis["server_cpu_us"]
    result = CaseResult("fleet")
    result.data = {
        "baseline_ref": ref,
        "revocations": REVOCATIONS,
        "before": before,
        "after": after,
        "before_redis": before_redis,
        "after_redis": after_redis,
    }
    result.rows = [
        Row(
            "12. Fleet control",
            "server CPU per handshake with revocation checks / before them (memory://)",
            ratio,
            "×",
            *at_most(ratio, 1.1),
            f"{after['server_cpu_us']:.0f} vs {before['server_cpu_us']:.0f} µs ({ref}); "
            f"{after['rate']:.0f}/s vs {before['rate']:.0f}/s; {REVOCATIONS} revocations in force",
        ),
        Row(
            "12. Fleet control",
            "server CPU per handshake with revocation checks and leases / before them (redis://)",
            redis_ratio,
            "×",
            *at_most(redis_ratio, 1.1),
            f"{after_redis['server_cpu_us']:.0f} vs {before_redis['server_cpu_us']:.0f} µs; "
            f"{after_redis['rate']:.0f}/s vs {before_redis['rate']:.0f}/s (no cap: leases written in "
            "batches, not per handshake)",
        ),
    ]
    return result
