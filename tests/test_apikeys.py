"""API keys: hashed at rest, runtime vs management vs project-less, expiry and revocation, reload,
broken files, the CLI, and a running service refusing revoked and expired keys."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from app.exceptions import InvalidCredentialsError, KeySetError, MissingCredentialsError
from app.tickets.apikeys import create_key, read_keys, revoke_key, write_keys
from app.tickets.bearer import ApiKeyStore, bearer_token
from app.tickets.keyfiles import locked
from app.tickets.rotation import ensure_keys
from tests.polling import poll
from tests.servers import ServiceProcess


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    plain, entry = create_key(path, project="p1", kind="runtime", now=1)
    text = path.read_text()
    assert plain not in text and entry.digest in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert ApiKeyStore(path).load().check(plain).project == "p1"


@pytest.mark.parametrize(
    ("kind", "project", "message"),
    [
        ("management", "p1", "management keys"),
        ("runtime", None, "no project"),
    ],
    ids=["management-kind", "project-less"],
)
def test_stored_keys_that_cannot_mint(tmp_path: Path, kind: str, project: str | None, message: str) -> None:
    path = tmp_path / "api_keys.json"
    plain, _ = create_key(path, project=project, kind=kind, now=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidCredentialsError, match=message) as caught:
        ApiKeyStore(path).load().check(plain)
    assert caught.value.code == "invalid_credentials" and caught.value.status == 401


def test_management_kind_stored_as_runtime_prefix_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    plain, _ = create_key(path, project="p", kind="runtime", now=1)
    data = json.loads(path.read_text())
    data["keys"][0]["kind"] = "management"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidCredentialsError, match="management"):
        ApiKeyStore(path).load().check(plain)


@pytest.mark.parametrize(
    ("token", "message"),
    [("oprk-unknown", "not valid"), ("opmak-unknown", "management keys")],
    ids=["unknown", "unknown-opmak"],
)
def test_unknown_keys(tmp_path: Path, token: str, message: str) -> None:
    with pytest.raises(InvalidCredentialsError, match=message):
        ApiKeyStore(tmp_path / "none.json").load().check(token)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc", "abc"), ("bearer   abc  ", "abc"), ("BEARER abc", "abc")],
    ids=["plain", "spaces", "upper"],
)
def test_bearer_token_parsing(header: str, expected: str) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   ", "abc"])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(MissingCredentialsError) as caught:
        bearer_token(header)
    assert caught.value.code == "missing_credentials"


def test_store_picks_up_new_keys_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    now = [0.0]
    store = ApiKeyStore(path, clock=lambda: now[0]).load()
    plain, _ = create_key(path, project="p", kind="runtime", now=1)
    now[0] += 0.5
    assert store.check(plain).project == "p"


def test_a_label_never_removes_another_key(tmp_path: Path) -> None:
    """A label names a key; it is not an identity: an earlier key with the same label, of this
    project or another one, keeps working."""
    path = tmp_path / "api_keys.json"
    other, _ = create_key(path, project="other", kind="runtime", now=1, label="ci")
    first, _ = create_key(path, project="dev", kind="runtime", now=2, label="ci")
    second, _ = create_key(path, project="dev", kind="runtime", now=3, label="ci")
    store = ApiKeyStore(path).load()
    assert [store.check(key).project for key in (other, first, second)] == ["other", "dev", "dev"]
    assert [entry["label"] for entry in stored(path)["keys"]] == ["ci", "ci", "ci"]


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REALTIME_KEYS_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "app.apikeys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_id_on_stderr_and_the_key_alone_on_stdout(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "create", "--project", "acme")
    assert result.returncode == 0
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and key.startswith("oprk-") and " " not in key
    key_id = stored(tmp_path / "api_keys.json")["keys"][0]["id"]
    assert key_id in result.stderr and key not in result.stderr
    assert ApiKeyStore(tmp_path / "api_keys.json").load().check(key).project == "acme"
    management = run_cli(tmp_path, "create", "--project", "acme", "--kind", "management")
    assert management.stdout.strip().startswith("opmak-") and len(management.stdout.splitlines()) == 1


def test_cli_refuses_without_a_project(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "create")
    assert result.returncode == 2 and "PROJECT" in result.stderr
    assert not (tmp_path / "api_keys.json").exists()


# Expiry, revocation, broken files, the dev key, and a running service ------------------------


def stored(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize(
    ("expires_at", "revoked", "message"),
    [
        (None, True, "revoked"),
        (999, False, "expired"),
        (1000, False, "expired"),  # at the expiry second itself
        (1000, True, "revoked"),  # revoked wins: it is the more specific reason
    ],
    ids=["revoked", "expired", "expires-now", "expired-and-revoked"],
)
def test_revoked_and_expired_keys_are_refused(
    tmp_path: Path, expires_at: int | None, revoked: bool, message: str
) -> None:
    path = tmp_path / "api_keys.json"
    plain, entry = create_key(path, project="p", kind="runtime", now=1, expires_at=expires_at)
    if revoked:
        revoke_key(path, entry.id, now=500)
    with pytest.raises(InvalidCredentialsError, match=message) as caught:
        ApiKeyStore(path, clock=lambda: 1000.0).load().check(plain)
    assert (caught.value.status, caught.value.code) == (401, "invalid_credentials")


def test_a_key_works_until_its_expiry(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    plain, _ = create_key(path, project="p", kind="runtime", now=1, expires_at=1000)
    now = [999.0]
    store = ApiKeyStore(path, clock=lambda: now[0]).load()
    assert store.check(plain).project == "p"
    now[0] = 1000.0
    with pytest.raises(InvalidCredentialsError, match="expired"):
        store.check(plain)


def test_revocation_reaches_a_loaded_store_at_its_next_look(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    plain, entry = create_key(path, project="p", kind="runtime", now=1)
    now = [10.0]
    store = ApiKeyStore(path, clock=lambda: now[0]).load()
    assert store.check(plain).project == "p"
    revoke_key(path, entry.id, now=11)
    now[0] += 0.5
    with pytest.raises(InvalidCredentialsError, match="revoked"):
        store.check(plain)


def test_revoking_an_unknown_id_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    create_key(path, project="p", kind="runtime", now=1)
    with pytest.raises(KeySetError, match="no API key with id"):
        revoke_key(path, "key_nope", now=2)


DEEP = "[" * 100_000 + "]" * 100_000
BROKEN = {
    "huge-created-at": '{"keys": [{"id": "k", "sha256": "00", "created_at": 1e400}]}',
    "huge-expires-at": '{"keys": [{"id": "k", "sha256": "00", "expires_at": 1e400}]}',
    "nan-revoked-at": '{"keys": [{"id": "k", "sha256": "00", "revoked_at": NaN}]}',
    "deep-nesting": '{"keys": ' + DEEP + "}",
    "deep-nesting-top": DEEP,
    "entry-not-object": '{"keys": [1]}',
    "digest-not-string": '{"keys": [{"id": "k", "sha256": 5}]}',
    "project-not-string": '{"keys": [{"id": "k", "sha256": "00", "project": {"a": 1}}]}',
    "not-json": "{ half written",
    "not-utf8": b"\xff\xfe{}".decode("latin-1"),
}


@pytest.mark.parametrize("text", list(BROKEN.values()), ids=list(BROKEN))
def test_a_broken_file_keeps_the_last_good_keys_and_logs_one_line(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "api_keys.json"
    plain, _ = create_key(path, project="p", kind="runtime", now=1)
    now = [0.0]
    store = ApiKeyStore(path, clock=lambda: now[0]).load()
    path.write_text(text, encoding="latin-1")
    for _ in range(3):  # three looks at the same broken version: one line
        now[0] += 1
        assert store.check(plain).project == "p"
        with pytest.raises(InvalidCredentialsError, match="not valid"):
            store.check("oprk-unknown")  # a miss looks at the file again
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "api_keys.json" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert (
        warnings[0].getMessage().startswith("api keys: ")
        and "keeping the 1 keys loaded before" in warnings[0].getMessage()
    )


def test_cli_lists_without_keys_and_revokes(tmp_path: Path) -> None:
    made = run_cli(tmp_path, "create", "--project", "acme", "--expires-days", "2", "--label", "ci")
    key = made.stdout.strip()
    key_id = stored(tmp_path / "api_keys.json")["keys"][0]["id"]
    listing = run_cli(tmp_path, "list").stdout
    header, row = listing.splitlines()
    assert header.split() == ["id", "key", "project", "kind", "label", "created", "expires", "revoked"]
    assert row.split()[:5] == [key_id, key[:8] + "...", "acme", "runtime", "ci"] and row.split()[-1] == "-"
    assert key not in listing and key[:9] not in listing
    revoked = run_cli(tmp_path, "revoke", "--id", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    assert run_cli(tmp_path, "list").stdout.splitlines()[1].split()[-1] != "-"
    unknown = run_cli(tmp_path, "revoke", "--id", "key_nope")
    assert unknown.returncode == 1 and "no API key with id" in unknown.stderr


# The key directory's change lock: API key commands beside each other and beside the key commands --


def holds_open(pid: int, lock: Path) -> bool:
    """Whether process `pid` has `lock` open (it is waiting for, or holding, the flock)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == lock:
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("command", ["create", "revoke"])
def test_api_key_commands_wait_for_the_key_directory_lock(tmp_path: Path, command: str) -> None:
    """While `make rotate` (or another key command) holds the lock, `create`/`revoke` wait for it,
    then read the file again: a key written under the lock is kept, not overwritten."""
    path = tmp_path / "api_keys.json"
    _, victim = create_key(path, project="p", kind="runtime", now=1)
    args = ["create", "--project", "acme"] if command == "create" else ["revoke", "--id", victim.id]
    with locked(tmp_path):
        process = subprocess.Popen(
            [sys.executable, "-m", "app.apikeys", *args],
            env={**os.environ, "REALTIME_KEYS_DIR": str(tmp_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not holds_open(process.pid, tmp_path / ".lock"):
                assert process.poll() is None, f"`{command}` changed the file without waiting for the lock"
                assert time.monotonic() < deadline, "timed out waiting for the command to reach the lock"
                time.sleep(0.02)
            assert process.poll() is None
            # Another command's change, made while it holds the lock.
            write_keys(path, [*read_keys(path), dataclasses.replace(victim, id="key_underlock", digest="00")])
        except BaseException:
            process.kill()
            raise
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    keys = {key.id: key for key in read_keys(path)}
    assert "key_underlock" in keys and victim.id in keys
    if command == "create":
        assert len(keys) == 3
    else:
        assert keys[victim.id].revoked_at is not None


def test_concurrent_api_key_commands_lose_no_key_and_no_revocation(tmp_path: Path) -> None:
    """Real processes at once: 12 creates beside 6 revokes; every key made is stored, every
    revocation reported is kept."""
    path = tmp_path / "api_keys.json"
    victims = [create_key(path, project=f"v{n}", kind="runtime", now=1)[1] for n in range(6)]
    env = {**os.environ, "REALTIME_KEYS_DIR": str(tmp_path)}
    commands = [["create", "--project", f"c{n}"] for n in range(12)]
    commands += [["revoke", "--id", victim.id] for victim in victims]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "app.apikeys", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    printed = []
    for process, args in zip(processes, commands, strict=True):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        if args[0] == "create":
            printed.append(out.strip())
    store = ApiKeyStore(path).load()
    assert sorted(store.check(key).project or "" for key in printed) == sorted(f"c{n}" for n in range(12))
    keys = {key.id: key for key in read_keys(path)}
    assert len(keys) == 18
    assert [keys[victim.id].revoked_at is not None for victim in victims] == [True] * 6


@pytest.mark.parametrize("days", ["0", "-1", "abc", "40000"], ids=["zero", "negative", "word", "too-many"])
def test_cli_refuses_a_bad_expiry(tmp_path: Path, days: str) -> None:
    result = run_cli(tmp_path, "create", "--project", "acme", "--expires-days", days)
    assert result.returncode == 2 and "EXPIRES" in result.stderr
    assert not (tmp_path / "api_keys.json").exists()


def test_dev_key_is_reused_until_it_stops_working(tmp_path: Path) -> None:
    first = run_cli(tmp_path, "dev").stdout.strip().splitlines()[-1]
    second = run_cli(tmp_path, "dev").stdout.strip().splitlines()
    assert second[-1] == first and second[0].startswith("reusing")
    assert ApiKeyStore(tmp_path / "api_keys.json").load().check(first).project == "dev"
    assert oct((tmp_path / "dev_api_key").stat().st_mode & 0o777) == "0o600"
    key_id = stored(tmp_path / "api_keys.json")["keys"][0]["id"]
    run_cli(tmp_path, "revoke", "--id", key_id)
    third = run_cli(tmp_path, "dev").stdout.strip().splitlines()[-1]
    assert third != first and ApiKeyStore(tmp_path / "api_keys.json").load().check(third).project == "dev"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    keys = tmp_path / "keys"
    ensure_keys(keys, now=int(time.time()))
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys)}, log_path=tmp_path / "service.log") as process:
        yield process


def mint(service: ServiceProcess, key: str) -> httpx.Response:
    return httpx.post(
        service.url + "/v3/realtime-sessions", headers={"Authorization": f"Bearer {key}"}, json={}, timeout=10
    )


def refused_with(service: ServiceProcess, key: str, word: str) -> bool:
    response = mint(service, key)
    if response.status_code == 200:
        return False
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (401, "invalid_credentials"), response.text
    assert word in error["message"] and key not in response.text
    return True


def test_a_running_service_refuses_a_revoked_key(service: ServiceProcess, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    plain, entry = create_key(keys / "api_keys.json", project="acme", kind="runtime", now=int(time.time()))
    assert mint(service, plain).status_code == 200
    result = run_cli(keys, "revoke", "--id", entry.id)
    assert result.returncode == 0, result.stderr
    poll(lambda: refused_with(service, plain, "revoked"), "the revoked key to be refused")
    # The WebSocket's bearer path uses the same check.
    with pytest.raises(InvalidStatus) as caught:
        connect(service.ws_url, additional_headers={"Authorization": f"Bearer {plain}"}, open_timeout=10)
    body = json.loads(caught.value.response.body or b"{}")
    assert (caught.value.response.status_code, body["error"]["code"]) == (401, "invalid_credentials")


def test_a_running_service_refuses_an_expired_key(service: ServiceProcess, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "api_keys.json"
    now = int(time.time())
    plain, _ = create_key(path, project="acme", kind="runtime", now=now, expires_at=now + 4)
    poll(lambda: mint(service, plain).status_code == 200 or time.time() >= now + 4, "a first mint")
    poll(lambda: refused_with(service, plain, "expired"), "the expired key to be refused")


def test_a_running_service_survives_broken_key_files(service: ServiceProcess, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "api_keys.json"
    plain, _ = create_key(path, project="acme", kind="runtime", now=int(time.time()))
    assert mint(service, plain).status_code == 200
    for count, name in enumerate(("huge-created-at", "deep-nesting"), start=1):
        path.write_text(BROKEN[name])
        for _ in range(5):  # each miss looks at the file: never a 500
            assert mint(service, "oprk-unknown").status_code == 401
            assert mint(service, plain).status_code == 200
        poll(lambda: service.log().count("api keys: ") >= count, f"warning line {count}")  # noqa: B023
    log = service.settled_log()
    assert log.count("api keys: ") == 2
    assert "Traceback" not in log and " 500" not in log


def run_make_run(tmp_path: Path) -> str:
    """`make run` on port 0: the dev key it printed, after checking that it mints there; then stop it."""
    venv = tmp_path / "venv"  # stands in for .venv, so make neither creates nor installs one
    venv.mkdir(exist_ok=True)
    (venv / ".installed").touch()
    log = tmp_path / "make-run.log"
    log.unlink(missing_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                "make",
                "-s",
                "run",
                "PORT=0",
                f"KEYS_DIR={tmp_path / 'keys'}",
                f"VENV={venv}",
                f"PY={sys.executable}",
            ],
            cwd=Path(__file__).resolve().parent.parent,
            env={k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make, the shell and the server stop together
        )
    try:
        poll(lambda: "Uvicorn running on" in log.read_text(), "make run to serve")
        text = log.read_text()
        port = int(text.split("Uvicorn running on http://127.0.0.1:")[1].split()[0])
        key = next(line for line in text.splitlines() if line.startswith("oprk-"))
        response = httpx.post(
            f"http://127.0.0.1:{port}/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {key}"},
            json={},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return key
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_make_run_prints_a_usable_dev_key_and_reuses_it(tmp_path: Path) -> None:
    first = run_make_run(tmp_path)
    assert run_make_run(tmp_path) == first
    assert len(stored(tmp_path / "keys" / "api_keys.json")["keys"]) == 1
