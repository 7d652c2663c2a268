"""The browser client package (clients/js): its node unit tests, `npm pack`, and the size the docs state."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "js"
MODULES = ("index.js", "pcm.js", "policy.js", "worklet.js")
SHIPPED = {"package.json", "README.md", "index.d.ts", *MODULES}


@pytest.fixture(scope="module")
def npm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    for binary in ("node", "npm"):
        assert shutil.which(binary), (
            f"{binary} is needed for the client package tests (apt-get install nodejs npm)"
        )
    cache = tmp_path_factory.mktemp("npm-cache")
    return {**os.environ, "npm_config_cache": str(cache), "npm_config_update_notifier": "false"}


def test_the_pure_logic_passes_its_node_tests(npm_env: dict[str, str]) -> None:
    files = sorted(str(path.relative_to(PACKAGE)) for path in (PACKAGE / "test").glob("*.test.js"))
    done = subprocess.run(
        ["node", "--test", *files], cwd=PACKAGE, env=npm_env, capture_output=True, timeout=120, check=False
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output + done.stderr.decode(errors="replace")
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    assert passed and int(passed.group(1)) >= 30 and "# fail 0" in output


def pack(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    packed: dict[str, Any] = json.loads(done.stdout)[0]
    return packed


def test_npm_pack_makes_a_package_node_can_import(tmp_path: Path, npm_env: dict[str, str]) -> None:
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["type"] == "module" and manifest["exports"]["."]["types"] == "./index.d.ts"
    assert not {"dependencies", "peerDependencies", "optionalDependencies"} & set(manifest)
    packed = pack(tmp_path, npm_env)
    assert {entry["path"] for entry in packed["files"]} == SHIPPED
    # Installed into an app from the tarball, and imported by its package name.
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    done = subprocess.run(
        ["npm", "install", "--offline", "--no-audit", "--no-fund", str(tmp_path / packed["filename"])],
        cwd=app,
        env=npm_env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (app / "node_modules" / "@realtime-tickets" / "client" / "worklet.js").exists()
    script = tmp_path / "app" / "check.mjs"
    script.write_text(
        'import { RealtimeSession, decide } from "@realtime-tickets/client";\n'
        'const url = "wss://edge.example/v3/realtime";\n'
        'const session = new RealtimeSession({ url, getTicket: async () => "t" });\n'
        "console.log(JSON.stringify({ status: session.status, retry: decide({ opened: false }).retry }));\n"
    )
    done = subprocess.run(
        ["node", str(script)], cwd=script.parent, env=npm_env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout) == {"status": "idle", "retry": True}


def sizes() -> tuple[int, int]:
    """The modules a page loads: bytes as shipped, and gzip-compressed one by one (as served)."""
    raw = [(PACKAGE / name).read_bytes() for name in MODULES]
    return sum(map(len, raw)), sum(len(gzip.compress(data, 9)) for data in raw)


def test_the_docs_state_the_current_size() -> None:
    page = (ROOT / "docs" / "browser.md").read_text()
    stated = re.search(r"[Ii]ts four modules are ([\d,]+) bytes\s+\(([\d,]+)\s+bytes gzip-compressed\)", page)
    assert stated, "docs/browser.md must state the package size"
    raw, compressed = sizes()
    # Within 10%: a small edit need not touch the docs, a real change in size must.
    for figure, actual in zip(stated.groups(), (raw, compressed), strict=True):
        assert abs(int(figure.replace(",", "")) - actual) <= actual / 10, (figure, actual)
