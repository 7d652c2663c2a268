"""Results: `results.json` (every figure and run) and `results.md` (the table in PERFORMANCE.md)."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import CaseResult, Plan


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
    }


def _figure(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(results: list[CaseResult]) -> str:
    lines = ["| Case | Measure | Value | Target | Met | Notes |", "|---|---|---|---|---|---|"]
    for result in results:
        for row in result.rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            value = f"{_figure(row.value)} {row.unit}".strip()
            lines.append(f"| {row.case} | {row.what} | {value} | {row.target} | {met} | {row.detail} |")
    return "\n".join(lines) + "\n"


def targets(results: list[CaseResult]) -> str:
    """The rows that have a target, alone: what was aimed at, what was measured, whether it was met."""
    lines = ["| Case | Target | Measured | Met |", "|---|---|---|---|"]
    for result in results:
        for row in result.rows:
            if row.target:
                met = "reported" if row.met is None else ("yes" if row.met else "**no**")
                value = f"{_figure(row.value)} {row.unit}".strip()
                lines.append(f"| {row.case} | {row.what} {row.target} | {value} | {met} |")
    return "\n".join(lines) + "\n"


def write(out: Path, plan: Plan, results: list[CaseResult], errors: dict[str, str], seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    body = {
        "machine": info,
        "quick": plan.quick,
        "repetitions": plan.repetitions,
        "duration_seconds": plan.duration,
        "concurrency": plan.concurrency,
        "elapsed_seconds": seconds,
        "cases": {
            result.name: {"rows": [asdict(row) for row in result.rows], "data": result.data}
            for result in results
        },
        "errors": errors,
    }
    (out / "results.json").write_text(json.dumps(body, indent=2, default=str) + "\n")
    header = (
        f"Machine: {info['cores']} cores, {info['cpu']}, {info['implementation']} {info['python']}; "
        f"{'quick' if plan.quick else 'full'} run, {plan.repetitions} repetition(s) of "
        f"{plan.duration:g} s per measurement, {plan.concurrency} concurrent clients; "
        f"{seconds:.0f} s in all.\n\n"
    )
    failed = "".join(f"\n- {name} failed: {message}" for name, message in errors.items())
    body_md = "## Targets\n\n" + targets(results) + "\n## Every figure\n\n" + table(results)
    (out / "results.md").write_text(header + body_md + (failed + "\n" if failed else ""))
