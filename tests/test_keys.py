"""Key set: states, rotation, retirement, crash safety, hot reload and the `python -m app.keys` CLI."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import multiprocessing
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.exceptions import KeySetError, UnknownKeyError
from app.tickets import keys as keys_module
from app.tickets.apikeys import create_key
from app.tickets.keyfiles import atomic_write, locked
from app.tickets.keys import KeySet
from app.tickets.keysource import DirectoryKeySource, SealKeySource
from app.tickets.rotation import ensure_keys, publish_wait, retire, retire_after, rotate
from app.tickets.sealkeys import SEAL_FILE
from app.tickets.ticket import issue, verify
from tests.servers import ServiceProcess

NOW = 1_800_000_000
WAIT = retire_after(leeway=5, grace=60)


def mint(keyset: KeySet, now: int = NOW) -> str:
    signer = keyset.signer
    assert signer is not None
    return issue(
        signer,
        project="p",
        config={},
        locked=(),
        ttl=300,
        now=now,
        issuer="i",
        audience="a",
        max_bytes=6144,
    ).token


def check(token: str, keyset: KeySet, now: int) -> str:
    ticket = verify(token, keyset, issuer="i", audience="a", leeway=5, max_bytes=6144, now=now)
    return ticket.kid


def states(keyset: KeySet) -> dict[str, int]:
    return {state: len(keyset.in_state(state)) for state in ("next", "active", "retiring")}


def test_make_keys_creates_active_and_next_and_is_idempotent(tmp_path: Path) -> None:
    first, changed = ensure_keys(tmp_path, now=NOW)
    assert changed and states(first) == {"next": 1, "active": 1, "retiring": 0}
    again, changed_again = ensure_keys(tmp_path, now=NOW + 10)
    assert not changed_again
    assert [k.kid for k in again.keys] == [k.kid for k in first.keys]


def test_private_keys_are_0600_and_jwks_has_nothing_private(tmp_path: Path) -> None:
    keyset, _ = ensure_keys(tmp_path, now=NOW)
    for key in keyset.keys:
        mode = stat.S_IMODE((tmp_path / f"{key.kid}.pem").stat().st_mode)
        assert mode == 0o600
    for jwk in keyset.jwks()["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert jwk["alg"] == "EdDSA" and jwk["crv"] == "Ed25519"


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    keyset, _ = ensure_keys(tmp_path, now=NOW)
    for key in keyset.keys:
        assert keys_module.thumbprint(key.x) == key.kid


def test_ticket_minted_before_rotate_verifies_after_and_fails_after_retire(tmp_path: Path) -> None:
    before, _ = ensure_keys(tmp_path, now=NOW)
    old_kid = before.signer.kid if before.signer else ""
    token = mint(before)

    rotated = rotate(tmp_path, now=NOW + 10)
    assert states(rotated) == {"next": 1, "active": 1, "retiring": 1}
    assert rotated.in_state("retiring")[0].kid == old_kid
    assert rotated.signer is not None and rotated.signer.kid == before.in_state("next")[0].kid
    assert check(token, KeySet.load(tmp_path), NOW + 20) == old_kid

    # Too early: retire keeps the key (tickets it signed may still be alive).
    assert retire(tmp_path, now=NOW + 10 + WAIT - 1, min_age=WAIT) == []
    assert check(token, KeySet.load(tmp_path), NOW + 20) == old_kid

    gone = retire(tmp_path, now=NOW + 10 + WAIT, min_age=WAIT)
    assert [key.kid for key in gone] == [old_kid]
    assert not (tmp_path / f"{old_kid}.pem").exists()
    with pytest.raises(UnknownKeyError) as caught:
        check(token, KeySet.load(tmp_path), NOW + 20)
    assert caught.value.code == "unknown_key"


def test_retire_force_drops_every_retiring_key_at_once(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=NOW)
    rotate(tmp_path, now=NOW + 1)
    rotate(tmp_path, now=NOW + 2)
    gone = retire(tmp_path, now=NOW + 3, min_age=WAIT, force=True)
    assert len(gone) == 2
    assert states(KeySet.load(tmp_path)) == {"next": 1, "active": 1, "retiring": 0}


def test_retire_never_touches_active_or_next(tmp_path: Path) -> None:
    keyset, _ = ensure_keys(tmp_path, now=NOW)
    assert retire(tmp_path, now=NOW + 10**6, min_age=0, force=True) == []
    assert [k.kid for k in KeySet.load(tmp_path).keys] == [k.kid for k in keyset.keys]


@pytest.mark.parametrize("fail_on_write", [1, 2], ids=["new-key-file", "manifest"])
def test_crash_mid_rotation_leaves_the_old_set_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on_write: int
) -> None:
    before, _ = ensure_keys(tmp_path, now=NOW)
    token = mint(before)
    real_write = atomic_write
    calls = {"n": 0}

    def failing_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on_write:
            raise OSError("disk full (simulated)")
        real_write(path, data, mode=mode)

    monkeypatch.setattr("app.tickets.rotation.atomic_write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        rotate(tmp_path, now=NOW + 10)
    monkeypatch.setattr("app.tickets.rotation.atomic_write", real_write)

    after = KeySet.load(tmp_path)
    assert [k.kid for k in after.keys] == [k.kid for k in before.keys]
    assert after.signer is not None and after.signer.kid == (before.signer.kid if before.signer else "")
    assert check(mint(after), after, NOW) == after.signer.kid
    assert check(token, after, NOW)
    # And the next rotation works.
    assert states(rotate(tmp_path, now=NOW + 20)) == {"next": 1, "active": 1, "retiring": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_crash_mid_retire_keeps_a_loadable_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_keys(tmp_path, now=NOW)
    rotate(tmp_path, now=NOW + 1)

    def failing_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        raise OSError("simulated")

    monkeypatch.setattr("app.tickets.rotation.atomic_write", failing_write)
    with pytest.raises(OSError):
        retire(tmp_path, now=NOW + 2, min_age=0, force=True)
    assert states(KeySet.load(tmp_path)) == {"next": 1, "active": 1, "retiring": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "run `make keys`"),
        ("not json", "cannot read"),
        ('{"keys": 3}', "`keys` list"),
        ('{"keys": [{"kid": "x"}]}', "lacks"),
    ],
    ids=["missing", "not-json", "keys-not-list", "entry-incomplete"],
)
def test_broken_key_sets_fail_loudly(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "jwks.json").write_text(content)
    with pytest.raises(KeySetError, match=message):
        KeySet.load(tmp_path)


def test_active_key_without_private_file_is_an_error(tmp_path: Path) -> None:
    keyset, _ = ensure_keys(tmp_path, now=NOW)
    assert keyset.signer is not None
    (tmp_path / f"{keyset.signer.kid}.pem").unlink()
    with pytest.raises(KeySetError, match="no private key"):
        KeySet.load(tmp_path)


def test_directory_source_picks_up_a_rotation_without_restart(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=NOW)
    now = [0.0]
    source = DirectoryKeySource(tmp_path, clock=lambda: now[0], check_interval=0.5)
    first = source.load().signer
    rotate(tmp_path, now=NOW + 1)
    # Within the check interval the cached set is served; after it, the new one.
    assert source.current().signer == first
    now[0] += 0.5
    second = source.current().signer
    assert second is not None and first is not None and second.kid != first.kid


def test_directory_source_keeps_last_good_set_when_file_is_broken(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=NOW)
    now = [0.0]
    source = DirectoryKeySource(tmp_path, clock=lambda: now[0])
    good = source.load()
    (tmp_path / "jwks.json").write_text("{ half written")
    now[0] += 1
    assert source.current() is good


def run_cli(*args: str, keys_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REALTIME_KEYS_DIR": str(keys_dir)}
    return subprocess.run(
        [sys.executable, "-m", "app.keys", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_cli_init_rotate_status_jwks_retire(tmp_path: Path) -> None:
    directory = tmp_path / "k"
    init = run_cli("init", keys_dir=directory)
    assert init.returncode == 0 and "created" in init.stdout
    assert "already present" in run_cli("init", keys_dir=directory).stdout
    active = KeySet.load(directory).in_state("active")[0].kid
    rotated = run_cli("rotate", "--force", keys_dir=directory)
    assert rotated.returncode == 0 and "rotated" in rotated.stdout
    status = run_cli("status", keys_dir=directory).stdout
    assert f"retiring  {active}" in status
    published = json.loads(run_cli("jwks", keys_dir=directory).stdout)
    assert len(published["keys"]) == 3 and all("d" not in jwk for jwk in published["keys"])
    kept = run_cli("retire", keys_dir=directory)
    assert kept.returncode == 0 and f"kept {active}" in kept.stdout
    forced = run_cli("retire", "--force", keys_dir=directory)
    assert f"retired {active}" in forced.stdout


def test_cli_reports_a_missing_set_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli("rotate", keys_dir=tmp_path / "none")
    assert result.returncode == 1
    assert "make keys" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_to_promote_a_next_key_published_too_recently(tmp_path: Path) -> None:
    """JWKS edges poll every few seconds: a next key they may not have fetched must not sign yet."""
    directory = tmp_path / "k"
    assert run_cli("init", keys_dir=directory).returncode == 0
    before = (directory / "jwks.json").read_text()
    refused = run_cli("rotate", keys_dir=directory)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: refused: the next key ")
    assert re.search(r"published [0-9]s ago", refused.stderr) and "`make rotate FORCE=1`" in refused.stderr
    assert "for 40s" in refused.stderr  # the default REALTIME_KEY_PUBLISH_SECONDS
    assert (directory / "jwks.json").read_text() == before
    assert run_cli("rotate", "--force", keys_dir=directory).returncode == 0
    # Twice in a row: the second would promote the key the first one just made.
    again = run_cli("rotate", keys_dir=directory)
    assert again.returncode == 1 and "refused" in again.stderr


@pytest.mark.parametrize(
    ("published", "allowed"),
    [(0, False), (39, False), (40, True), (3600, True), (-5, False)],
    ids=["just-made", "one-second-short", "exactly-enough", "long-ago", "clock-stepped-back"],
)
def test_rotate_promotes_only_a_next_key_published_long_enough(
    tmp_path: Path, published: int, allowed: bool
) -> None:
    keyset, _ = ensure_keys(tmp_path, now=NOW)
    nxt = keyset.in_state("next")[0]
    if allowed:
        rotated = rotate(tmp_path, now=NOW + published, min_published=40)
        assert rotated.signer is not None and rotated.signer.kid == nxt.kid
    else:
        with pytest.raises(KeySetError, match="refused: the next key"):
            rotate(tmp_path, now=NOW + published, min_published=40)
        assert KeySet.load(tmp_path).in_state("next")[0].kid == nxt.kid
        assert sorted(p.name for p in tmp_path.glob("*.pem")) == sorted(f"{k.kid}.pem" for k in keyset.keys)


@pytest.mark.parametrize(
    ("configured", "refresh", "timeout", "expected"),
    [(40, 5.0, 2.0, 40), (0, 5.0, 2.0, 8), (8, 5.0, 2.0, 8), (10, 60.0, 2.0, 63)],
    ids=["default", "floor", "at-floor", "slow-edges-raise-the-floor"],
)
def test_publish_wait_never_undercuts_the_edges_refresh(
    configured: int, refresh: float, timeout: float, expected: int
) -> None:
    assert publish_wait(configured=configured, refresh_interval=refresh, fetch_timeout=timeout) == expected


def rotate_slowly(directory: str, barrier: Any) -> None:
    """In a child process: rotate on a disk that takes 0.3 s per write, once every child is ready."""
    from app.tickets import rotation

    def slow_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        time.sleep(0.3)  # a slow disk: the window between reading and replacing the manifest widens
        atomic_write(path, data, mode=mode)

    rotation.atomic_write = slow_write  # type: ignore[attr-defined]
    barrier.wait(30)
    rotation.rotate(Path(directory), now=NOW + 1)


def test_two_processes_rotating_at_once_make_two_clean_rotations(tmp_path: Path) -> None:
    first, _ = ensure_keys(tmp_path, now=NOW)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    children = [context.Process(target=rotate_slowly, args=(str(tmp_path), barrier)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0]
    after = KeySet.load(tmp_path)
    assert states(after) == {"next": 1, "active": 1, "retiring": 2}
    # Both old keys retire; the key the first rotation made signs; nothing is lost or left over.
    assert {key.kid for key in after.in_state("retiring")} == {key.kid for key in first.keys}
    assert sorted(p.name for p in tmp_path.glob("*.pem")) == sorted(f"{key.kid}.pem" for key in after.keys)
    assert after.signer is not None and check(mint(after), after, NOW) == after.signer.kid
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_held_lock_makes_a_change_wait_then_give_up_with_a_clear_message(tmp_path: Path) -> None:
    ensure_keys(tmp_path, now=NOW)
    with locked(tmp_path), pytest.raises(KeySetError, match="another command has been changing"):
        with locked(tmp_path, timeout=0.1):
            pass
    with locked(tmp_path, timeout=0.1):  # released
        pass


def break_by_symlink_loop(manifest: Path) -> None:
    manifest.unlink()
    manifest.symlink_to(manifest.name)  # jwks.json -> jwks.json: ELOOP on every open and stat


def break_by_directory(manifest: Path) -> None:
    manifest.unlink()
    manifest.mkdir()  # EISDIR on read (a permission error cannot be made as root)


BREAKAGES = [
    ("symlink-loop", break_by_symlink_loop, "Too many levels of symbolic links"),
    ("directory", break_by_directory, "Is a directory"),
    ("half-written", lambda manifest: manifest.write_text("{ half"), "cannot read"),
    ("missing", lambda manifest: manifest.unlink(), "is missing"),
]


@pytest.mark.parametrize(
    ("breakage", "message"), [case[1:] for case in BREAKAGES], ids=[case[0] for case in BREAKAGES]
)
def test_directory_source_keeps_the_last_good_set_and_says_so_once(
    tmp_path: Path, breakage: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_keys(tmp_path, now=NOW)
    now = [0.0]
    source = DirectoryKeySource(tmp_path, clock=lambda: now[0])
    good = source.load()
    saved = (tmp_path / "jwks.json").read_bytes()
    breakage(tmp_path / "jwks.json")
    with caplog.at_level(logging.WARNING, logger="app.tickets.keysource"):
        for _ in range(5):
            now[0] += 1
            assert source.current() is good
            assert asyncio.run(source.refresh()) is good
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and message in lines[0] and "keeping the 2 keys loaded before" in lines[0], lines
    # Repaired: the next look loads the set again.
    target = tmp_path / "jwks.json"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        target.rmdir()
    atomic_write(target, saved)
    rotated = rotate(tmp_path, now=NOW + 1)  # writes a fresh manifest
    now[0] += 1
    assert {key.kid for key in source.current().keys} == {key.kid for key in rotated.keys}


def test_directory_source_survives_a_permission_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As root no file is unreadable, so the stat is made to fail as it would for another user."""
    ensure_keys(tmp_path, now=NOW)
    now = [0.0]
    source = DirectoryKeySource(tmp_path, clock=lambda: now[0])
    good = source.load()

    def denied(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("app.tickets.keysource.stamp", denied)
    with caplog.at_level(logging.WARNING, logger="app.tickets.keysource"):
        for _ in range(3):
            now[0] += 1
            assert source.current() is good
    assert [r.getMessage() for r in caplog.records] == [
        f"keys: cannot read {tmp_path / 'jwks.json'} (Permission denied); keeping the 2 keys loaded before"
    ]
    with pytest.raises(KeySetError, match="Permission denied"):
        source.load()


def test_a_running_service_keeps_minting_when_its_manifest_becomes_unreadable(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 3600)
    api_key, _ = create_key(keys_dir / "api_keys.json", project="p", kind="runtime", now=int(time.time()))
    with ServiceProcess(
        env={"REALTIME_KEYS_DIR": str(keys_dir)}, log_path=tmp_path / "service.log"
    ) as service:
        jwks_before = httpx.get(service.url + "/.well-known/jwks.json", timeout=10).json()
        break_by_symlink_loop(keys_dir / "jwks.json")
        for _ in range(4):
            minted = httpx.post(
                service.url + "/v3/realtime-sessions",
                headers={"Authorization": f"Bearer {api_key}"},
                json={},
                timeout=10,
            )
            assert minted.status_code == 200, minted.text
            assert httpx.get(service.url + "/.well-known/jwks.json", timeout=10).json() == jwks_before
            time.sleep(0.6)  # spans the source's 0.5 s check interval, so each request looks again
        log = service.settled_log()
    lines = [line for line in log.splitlines() if "keys: cannot read" in line]
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    assert "Traceback" not in log and " ERROR " not in log


def app_imports() -> dict[str, set[str]]:
    """Each module of the `app` package with the `app` modules it imports (anywhere in its code)."""
    root = Path(__file__).resolve().parent.parent
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "app").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "app":
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.split(".")[0] == "app")
        graph[name] = imported
    return graph


def test_no_module_of_the_app_imports_itself_through_others() -> None:
    """`python -m app.keys` lives in app/ops/keys.py so the key set never imports its writers."""
    graph = app_imports()
    assert (
        "app.tickets.rotation" in graph["app.ops.keys"]
        and "app.tickets.keys" in graph["app.tickets.rotation"]
    )
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for imported in graph.get(module, set()):
                if imported == start:
                    cycles.append(" -> ".join([*path, imported]))
                elif imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*path, imported]))
    assert cycles == []


def test_make_keys_on_a_complete_read_only_directory_needs_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted secret is read-only: `make keys` there finds the set complete and changes nothing."""
    first, _ = ensure_keys(tmp_path, now=NOW)
    real_open = os.open

    def read_only(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr("app.tickets.keyfiles.os.open", read_only)
    again, changed = ensure_keys(tmp_path, now=NOW + 1)
    assert not changed and [k.kid for k in again.keys] == [k.kid for k in first.keys]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [(break_by_symlink_loop, "Too many levels of symbolic links"), (break_by_directory, "IsADirectoryError")],
    ids=["symlink-loop", "directory"],
)
def test_seal_key_source_keeps_the_last_good_set_and_says_so_once(
    tmp_path: Path, breakage: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_keys(tmp_path, now=NOW)
    now = [0.0]
    source = SealKeySource(tmp_path / SEAL_FILE, clock=lambda: now[0])
    good = source.load()
    assert good.keys
    breakage(tmp_path / SEAL_FILE)
    with caplog.at_level(logging.WARNING, logger="app.tickets.keysource"):
        for _ in range(3):
            now[0] += 1
            assert source.current() is good
            assert asyncio.run(source.refresh()) is good
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("seal keys: "), lines
