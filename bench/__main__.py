"""`python -m bench [--quick] [--out DIR] [--only CASE ...]`: run every case and write the results."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import (
    abuse,
    common,
    ed25519,
    fleet,
    live,
    mint,
    providers,
    redemption,
    servers,
    sessions,
    verification,
    workers,
)
from bench.procs import raise_nofile
from bench.report import table, write

HERE = Path(__file__).resolve().parent
NAMES = (
    "mint",
    "redemption",
    "verify",
    "relay",
    "scale",
    "providers",
    "abuse",
    "workers",
    "live",
    "ed25519",
    "fleet",
)
OPTIONAL = ("servers",)  # run with --only: it needs granian, which the service does not depend on


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short repetition, 200 sessions (~1 min)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json and results.md go")
    parser.add_argument("--only", nargs="*", choices=NAMES + OPTIONAL, help="run only these cases")
    parser.add_argument("--sessions", type=int, help="sessions to hold in the scale case")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="live case: also measure the edge of this checkout (e.g. `git worktree add` of an older commit)",
    )
    args = parser.parse_args(argv)
    limit = raise_nofile()
    count = args.sessions or (200 if args.quick else 10_000)
    if count + 100 > limit:
        print(f"warning: open-file limit {limit} is below {count} sessions", file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        plan = common.Plan(
            quick=args.quick,
            repetitions=1 if args.quick else 5,
            duration=1.0 if args.quick else 4.0,
            concurrency=16,
            sessions=8,
            workdir=Path(tmp),
            baseline=args.baseline_tree,
        )
        runners: dict[str, Callable[[], common.CaseResult]] = {
            "verify": lambda: verification.case_verify(plan),
            "mint": lambda: mint.case_mint(plan),
            "redemption": lambda: redemption.case_redemption(plan),
            "relay": lambda: sessions.case_relay(plan),
            "scale": lambda: sessions.case_scale(plan, count),
            "providers": lambda: providers.case_providers(plan),
            "abuse": lambda: abuse.case_abuse(plan),
            "workers": lambda: workers.case_workers(plan),
            "live": lambda: live.case_live(plan),
            "ed25519": lambda: ed25519.case_ed25519(plan),
            "servers": lambda: servers.case_servers(plan),
            "fleet": lambda: fleet.case_fleet(plan),
        }
        results: list[common.CaseResult] = []
        errors: dict[str, str] = {}
        for name in args.only or NAMES:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                results.append(runners[name]())
            except Exception as exc:  # one failed case must not lose the others' figures
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"bench: {name} done in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
        write(args.out, plan, results, errors, time.perf_counter() - started)
    print(table(results))
    for name, message in errors.items():
        print(f"{name} failed: {message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
