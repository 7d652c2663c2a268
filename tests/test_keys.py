"""Key set: states, rotation, retirement, crash safety, hot reload and the `python -m app.keys` CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app import keys as keys_module
from app.exceptions import KeySetError, UnknownKeyError
from app.files import atomic_write
from app.keys import KeySet
from app.keysource import DirectoryKeySource
from app.rotation import ensure_keys, retire, retire_after, rotate
from app.tickets import issue, verify

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

    monkeypatch.setattr("app.rotation.atomic_write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        rotate(tmp_path, now=NOW + 10)
    monkeypatch.setattr("app.rotation.atomic_write", real_write)

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

    monkeypatch.setattr("app.rotation.atomic_write", failing_write)
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
    rotated = run_cli("rotate", keys_dir=directory)
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
