"""Case 8: handshakes with `python -m app.serve --workers 2` beside one worker, on a shared Redis."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    CaseResult,
    Plan,
    Row,
    interleaved,
    loadgen,
    mint_tickets,
    new_keys,
    service,
    signer_of,
    summary,
)
from bench.procs import ROOT, Server, family

WORKERS = 2


def supported() -> bool:
    """Whether this checkout's `python -m app.serve` takes `--workers`."""
    done = subprocess.run(
        [sys.executable, "-m", "app.serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--workers" in done.stdout


def _await_workers(server: Server, timeout: float = 60.0) -> None:
    """Until every worker has logged its start: the first to answer /healthz may be alone so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log_path.read_text(errors="replace").count("Application startup complete") >= WORKERS:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{WORKERS} workers did not all start within {timeout:g} s; see {server.log_path}")


def case_workers(plan: Plan) -> CaseResult:
    """Handshakes per second (redis://, as several workers need) with one and with two workers.

    Server CPU is summed over the supervisor and its workers; the load generator's own CPU is
    reported too, since on two cores it competes with the workers.
    """
    if not supported():
        raise RuntimeError("python -m app.serve has no --workers option in this checkout")
    keys_dir, _ = new_keys(plan.workdir, "workers")
    signer = signer_of(keys_dir)
    prefix = f"bench:{secrets.token_hex(4)}:"
    env = {"REALTIME_REPLAY_URL": "redis://127.0.0.1:6379/0", "REALTIME_REPLAY_PREFIX": prefix}
    one = service(plan, "workers-1", keys_dir, **env)
    several = Server(
        "app.serve",
        env={"REALTIME_KEYS_DIR": str(keys_dir), **env},
        log_path=plan.workdir / f"workers-{WORKERS}.log",
        args=("--workers", str(WORKERS)),
    )
    targets = {"one": one, "several": several}
    estimate = 2000.0

    def measure(name: str, target: Server) -> dict[str, Any]:
        nonlocal estimate
        count = int(estimate * 1.5 * plan.duration) + 200
        tickets = plan.workdir / f"tickets-workers-{name}.txt"
        tickets.write_text("\n".join(mint_tickets(signer, count)))
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
        if run["ops"] == 0:
            raise RuntimeError(f"no handshake succeeded against {name}: {run['first_error']}")
        estimate = max(estimate, run["rate"])
        return run

    with contextlib.ExitStack() as started:
        for target in targets.values():
            started.enter_context(target)
        _await_workers(several)
        runs = interleaved(plan, targets, measure)
        processes = len(family(several.pid))
    single, multi = summary(runs["one"]), summary(runs["several"])
    for values, name in ((single, "one"), (multi, "several")):
        values["client_cores"] = sorted(run["client_cpu"] / run["seconds"] for run in runs[name])[
            len(runs[name]) // 2
        ]
        values["server_cores"] = sorted(run["server_cpu"] / run["seconds"] for run in runs[name])[
            len(runs[name]) // 2
        ]
    ratio = multi["rate"] / single["rate"]
    result = CaseResult("workers")
    result.data = {"one": single, "several": multi, "workers": WORKERS, "processes": processes}
    result.rows = [
        Row(
            "8. Workers",
            f"handshakes (redis://), --workers {WORKERS} / one worker",
            ratio,
            "×",
            "reported",
            None,
            f"{multi['rate']:.0f}/s vs {single['rate']:.0f}/s; server CPU {multi['server_cores']:.2f} vs "
            f"{single['server_cores']:.2f} cores, load generator {multi['client_cores']:.2f} vs "
            f"{single['client_cores']:.2f} cores (one process, sharing the {WORKERS} cores)",
        )
    ]
    return result
