"""`python -m bench --quick` runs every case and each produces a number (no timing thresholds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import NAMES

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_quick_bench_gives_a_number_for_every_case(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {}
    assert set(results["cases"]) == set(NAMES)
    for name, case in results["cases"].items():
        assert case["rows"], name
        for row in case["rows"]:
            assert isinstance(row["value"], int | float) and math.isfinite(row["value"]), (name, row)
    # The floors (the bare baselines plus only the signature, or only passing frames) ran too.
    for name in ("mint", "redemption", "relay"):
        floors = [row for row in results["cases"][name]["rows"] if "floor" in row["what"]]
        # A floor's added cost is a difference of two timings: on a busy machine a short run can
        # make it negative, so only its presence (a finite number, checked above) is asserted.
        assert len(floors) == 1, (name, floors)
        assert results["cases"][name]["data"]["floor"]["errors"] == 0, name
    # The naive peer ran beside the mint and the handshake.
    for name, what in (("mint", "mint / naive peer throughput"), ("redemption", "handshakes / naive peer")):
        found = [row for row in results["cases"][name]["rows"] if row["what"].startswith(what)]
        assert len(found) == 1 and found[0]["value"] > 0, (name, found)
        assert results["cases"][name]["data"]["peer"]["errors"] == 0, name
    # Every row with a target says whether it was met; rows without one say nothing.
    targets = [row for case in results["cases"].values() for row in case["rows"] if row["target"]]
    assert len(targets) >= 9
    for row in targets:
        assert row["met"] in (True, False) or row["target"] == "reported", row
    workers = results["cases"]["workers"]["data"]
    assert workers["processes"] == workers["workers"] + 1  # the supervisor and its workers
    table = (tmp_path / "results.md").read_text()
    summary = table.split("## Every figure")[0]
    assert summary.count("\n| ") - 1 == len(targets)  # the targets table: one line per target
    assert all(f"{number}. " in table for number in (*range(1, 11), 12))
    # The live voice case searched both the edge and its floor, and each probe says whether it held.
    live = results["cases"]["live"]["data"]
    for side in ("edge", "floor"):
        assert live[side]["probes"] and all(isinstance(p["held"], bool) for p in live[side]["probes"])
    # The provider case: its pass-through floor, the translation cost per audio frame, a resumption.
    rows = {row["what"]: row["value"] for row in results["cases"]["providers"]["rows"]}
    assert rows["floor: pass-through relay to the same fake, round trips"] > 0
    assert rows["translation per 20 ms audio frame, both ways"] > 0
    assert rows["Gemini resumption gap: goAway to the new connection's first message"] > 0
    assert len(results["cases"]["providers"]["data"]["resumption_gaps_ms"]) == 5
