"""Case 11: the service's app under granian beside `python -m app.serve` (uvicorn), interleaved.

Both are one worker with the same keys and `memory://`; the handshakes present sealed tickets (the
minter's default) and the mints are the mint case's request. The server CPU is summed over each
server's processes (granian runs its worker as a child). Granian is not a dependency of the service:
without it (`pip install granian`) the case reports that it did not run. Under granian the
uvicorn-level bounds of `python -m app.serve` do not run (bench/granian_edge.py), so its figures are an upper
bound on what moving would give.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from bench.common import (
    MINT_BODY,
    CaseResult,
    Plan,
    Row,
    interleaved,
    loadgen,
    mint_tickets,
    new_keys,
    sealer_of,
    service,
    signer_of,
    summary,
)
from bench.procs import Server, family


def case_servers(plan: Plan) -> CaseResult:
    result = CaseResult("servers")
    if importlib.util.find_spec("granian") is None:
        result.rows = [
            Row("11. Servers", "granian beside uvicorn", float("nan"), "", "", None, "not installed")
        ]
        return result
    keys_dir, api_key = new_keys(plan.workdir, "servers")
    signer, sealer = signer_of(keys_dir), sealer_of(keys_dir)
    env = {"REALTIME_KEYS_DIR": str(keys_dir)}
    targets = {
        "uvicorn": service(plan, "servers-uvicorn", keys_dir),
        "granian": Server("bench.granian_edge", env=env, log_path=plan.workdir / "servers-granian.log"),
    }
    estimate = 2000.0

    def handshakes(name: str, target: Server) -> dict[str, Any]:
        nonlocal estimate
        tickets = plan.workdir / f"tickets-servers-{name}.txt"
        count = int(estimate * 1.5 * plan.duration) + 200
        tickets.write_text("\n".join(mint_tickets(signer, count, seal=sealer)))
        run = loadgen(
            {
                "mode": "handshake",
                "port": target.port,
                "tickets_file": str(tickets),
                "expect": "session.started",
                "concurrency": plan.concurrency,
                "duration": plan.duration,
                "server_pids": family(target.pid),
            }
        )
        tickets.unlink()
        estimate = max(estimate, run["rate"])
        return run

    def mints(name: str, target: Server) -> dict[str, Any]:
        return loadgen(
            {
                "mode": "mint",
                "port": target.port,
                "path": "/v3/realtime-sessions",
                "body": json.dumps(MINT_BODY),
                "headers": {"Authorization": f"Bearer {api_key}"},
                "concurrency": plan.concurrency,
                "duration": plan.duration,
                "server_pids": family(target.pid),
            }
        )

    with targets["uvicorn"], targets["granian"]:
        shakes = {name: summary(runs) for name, runs in interleaved(plan, targets, handshakes).items()}
        minted = {name: summary(runs) for name, runs in interleaved(plan, targets, mints).items()}
    rate = shakes["granian"]["rate"] / shakes["uvicorn"]["rate"]
    cpu = shakes["granian"]["server_cpu_us"] / shakes["uvicorn"]["server_cpu_us"]
    mint_rate = minted["granian"]["rate"] / minted["uvicorn"]["rate"]
    result.data = {"handshakes": shakes, "mints": minted}
    errors = {name: shakes[name]["errors"] + minted[name]["errors"] for name in targets}
    result.rows = [
        Row(
            "11. Servers",
            "handshakes (sealed, memory://), granian / uvicorn",
            rate,
            "×",
            "reported",
            None,
            f"{shakes['granian']['rate']:.0f} against {shakes['uvicorn']['rate']:.0f}/s; errors "
            f"{errors['granian']} and {errors['uvicorn']}; granian without the uvicorn-level bounds",
        ),
        Row(
            "11. Servers",
            "server CPU per handshake, granian / uvicorn",
            cpu,
            "×",
            "",
            None,
            f"{shakes['granian']['server_cpu_us']:.0f} against {shakes['uvicorn']['server_cpu_us']:.0f} µs",
        ),
        Row(
            "11. Servers",
            "mints (sealed), granian / uvicorn",
            mint_rate,
            "×",
            "",
            None,
            f"{minted['granian']['rate']:.0f} against {minted['uvicorn']['rate']:.0f}/s; server CPU per mint "
            f"{minted['granian']['server_cpu_us']:.0f} against {minted['uvicorn']['server_cpu_us']:.0f} µs",
        ),
    ]
    return result
