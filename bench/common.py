"""What every case shares: the plan, result rows, keys and tickets, load generators and statistics."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.tickets.apikeys import create_key
from app.tickets.keys import KeySet, SigningKey
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE, SealKey, SealKeySet
from app.tickets.ticket import issue
from bench.procs import ROOT, Server

T = TypeVar("T")

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
    baseline: Path | None = None  # another checkout of the project, measured beside this one


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


def run_client(module: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run `python -m <module>` with `spec` on stdin to completion; its last stdout line is the result."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(spec) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load generator process to completion and return its result."""
    return run_client("bench.loadgen", spec)


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


def bare(plan: Plan, name: str, *args: str, env: dict[str, str] | None = None) -> Server:
    """A `python -m bench.bare` baseline (or, with floor options, a floor); started with `with`."""
    return Server("bench.bare", env=env or {}, log_path=plan.workdir / f"{name}.log", args=args)


def peer(plan: Plan, name: str, keys_dir: Path, api_key: str, *, stock: bool = False) -> Server:
    """The naive peer (`python -m bench.peer`) with the same keys and API key as the service; with
    `stock`, on uvicorn's own protocol classes and defaults, as a user would run it."""
    return Server(
        "bench.peer",
        env={"BENCH_PEER_API_KEY": f"{api_key}={PROJECT}"},
        log_path=plan.workdir / f"{name}.log",
        args=("--keys-dir", str(keys_dir), *(("--stock",) if stock else ())),
    )


def at_least(value: float, target: float) -> tuple[str, bool]:
    """A row's target text and whether `value` meets it."""
    return f"≥ {target:g}", value >= target


def at_most(value: float, target: float) -> tuple[str, bool]:
    return f"≤ {target:g}", value <= target


def below(value: float, target: float) -> tuple[str, bool]:
    return f"< {target:g}", value < target


def sealer_of(keys_dir: Path) -> SealKey:
    sealer = SealKeySet.load(keys_dir / SEAL_FILE).sealer
    assert sealer is not None
    return sealer


def signer_of(keys_dir: Path) -> SigningKey:
    signer = KeySet.load(keys_dir).signer
    assert signer is not None and signer.private_key is not None
    return signer


#: A fresh memory:// store refuses tickets it did not mint until its first leeway + 1 s have passed
#: (docs/operations.md, the restart window): cases that mint their own tickets wait this long after
#: starting such a server (the default leeway, one second, and a margin).
RESTART_WINDOW_SECONDS = 5 + 1.5


def mint_tickets(
    signer: SigningKey,
    count: int,
    config: dict[str, Any] | None = None,
    *,
    seal: SealKey | None = None,
    api_key_id: str | None = None,
) -> list[str]:
    """Tickets as the service mints them: plain JWS, or with `seal` sealed (the minter's default)."""
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
            seal=seal,
            api_key_id=api_key_id,
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


def interleaved(
    plan: Plan, targets: Mapping[str, T], measure: Callable[[str, T], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """`measure` each target once per repetition, in an order that alternates between repetitions,
    so a drift of the shared machine weighs on every target alike."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for repetition in range(plan.repetitions):
        order = list(targets) if repetition % 2 == 0 else list(targets)[::-1]
        for name in order:
            runs[name].append(measure(name, targets[name]))
    return runs
