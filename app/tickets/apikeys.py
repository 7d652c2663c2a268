"""API keys: the key file, hashed at rest; the lookup is in `app.tickets.bearer`.

The file (`keys/api_keys.json` by default) holds one entry per key: an id, the SHA-256 of the key,
the project, the kind, the key's first 8 characters (so a listing can tell keys apart), and optionally
a label, an expiry and a revocation time. Keys are 256 random
bits, so a fast hash is enough: there is nothing to brute-force, unlike a password. The plain key
is printed once, when it is made, and never stored (except `make run`'s dev key: see `dev_key`).

A request's key is checked in constant time by `app.tickets.bearer.ApiKeyStore`, which rereads the
file when it changes; the commands (`python -m app.apikeys`) are in `app/ops/apikeys.py`.
Every change holds the change lock of the file's directory (`app.tickets.keyfiles.locked`), the one the
signing and seal key commands take in the keys directory, from reading the file to replacing it: commands
run at once never lose a key or a revocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.exceptions import KeySetError
from app.tickets.keyfiles import atomic_write, locked

Kind = Literal["runtime", "management"]
RUNTIME_PREFIX = "oprk-"
MANAGEMENT_PREFIX = "opmak-"
DEV_KEY_FILE = "dev_api_key"  # the plain dev key of `make run`, beside api_keys.json
SHOWN_CHARACTERS = 8  # of a key, stored and listed so an operator can tell which id is which key


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without the secret."""

    id: str
    digest: str
    project: str | None
    kind: Kind
    created_at: int
    label: str | None = None
    expires_at: int | None = None
    revoked_at: int | None = None
    shown: str | None = None  # the key's first SHOWN_CHARACTERS characters (None: made before they were kept)

    def refusal(self, now: float) -> str | None:
        """Why this key cannot be used at `now` (revoked, expired), or None."""
        if self.revoked_at is not None:
            return f"the API key was revoked at {utc_time(self.revoked_at)}"
        if self.expires_at is not None and now >= self.expires_at:
            return f"the API key expired at {utc_time(self.expires_at)}"
        return None


def utc_time(epoch: int | None) -> str:
    """`epoch` as an ISO 8601 UTC time to the second, or "-" for none."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return int(value)  # OverflowError for 1e400 (inf), ValueError for NaN


def _optional_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def read_keys(path: Path) -> list[ApiKey]:
    """The keys stored in `path` (none when it is missing).

    Raises:
        KeySetError: unreadable or malformed file (any shape: wrong types, huge numbers, deep nesting).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as exc:
        raise KeySetError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeySetError(f"{path}: expected an object with a `keys` list")
    keys = []
    for number, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise TypeError("expected an object")
            key_id, sha = entry["id"], entry["sha256"]
            if not isinstance(key_id, str) or not isinstance(sha, str):
                raise TypeError("id and sha256 must be strings")
            keys.append(
                ApiKey(
                    id=key_id,
                    digest=sha,
                    project=_optional_str(entry.get("project")),
                    kind="management" if entry.get("kind") == "management" else "runtime",
                    created_at=_optional_int(entry.get("created_at")) or 0,
                    label=_optional_str(entry.get("label")),
                    expires_at=_optional_int(entry.get("expires_at")),
                    revoked_at=_optional_int(entry.get("revoked_at")),
                    shown=_optional_str(entry.get("shown")),
                )
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise KeySetError(f"{path}: malformed key entry #{number}: {type(exc).__name__}") from None
    return keys


def write_keys(path: Path, keys: Sequence[ApiKey]) -> None:
    """Replace the file with `keys`, atomically, readable by its owner only."""
    body = {
        "keys": [
            {
                "id": key.id,
                "sha256": key.digest,
                "project": key.project,
                "kind": key.kind,
                "created_at": key.created_at,
                **({"shown": key.shown} if key.shown else {}),
                **({"label": key.label} if key.label else {}),
                **({"expires_at": key.expires_at} if key.expires_at is not None else {}),
                **({"revoked_at": key.revoked_at} if key.revoked_at is not None else {}),
            }
            for key in keys
        ]
    }
    atomic_write(path, (json.dumps(body, indent=2) + "\n").encode("utf-8"), mode=0o600)


def create_key(
    path: Path,
    *,
    project: str | None,
    kind: Kind,
    now: int,
    label: str | None = None,
    expires_at: int | None = None,
) -> tuple[str, ApiKey]:
    """Make a key, store its hash, and return (the plain key, the stored entry).

    A `label` only describes the key: other keys with the same label stay as they are.
    """
    with locked(path.parent):
        return _add_key(path, project=project, kind=kind, now=now, label=label, expires_at=expires_at)


def _add_key(
    path: Path, *, project: str | None, kind: Kind, now: int, label: str | None, expires_at: int | None
) -> tuple[str, ApiKey]:
    """`create_key` with the lock already held."""
    prefix = MANAGEMENT_PREFIX if kind == "management" else RUNTIME_PREFIX
    plain = prefix + secrets.token_urlsafe(32)
    entry = ApiKey(
        f"key_{secrets.token_hex(6)}",
        digest(plain),
        project,
        kind,
        now,
        label,
        expires_at,
        shown=plain[:SHOWN_CHARACTERS],
    )
    write_keys(path, [*read_keys(path), entry])
    return plain, entry


def revoke_key(path: Path, key_id: str, *, now: int) -> ApiKey:
    """Mark the key `key_id` revoked (kept in the file, so listings show it); returns it.

    Raises:
        KeySetError: no key with that id.
    """
    with locked(path.parent):
        keys = read_keys(path)
        found = next((key for key in keys if key.id == key_id), None)
        if found is None:
            raise KeySetError(f"no API key with id {key_id!r} in {path} (see make api-keys)")
        if found.revoked_at is not None:
            return found
        revoked = dataclasses.replace(found, revoked_at=now)
        write_keys(path, [revoked if key.id == key_id else key for key in keys])
        return revoked


def dev_key(path: Path, keep: Path, *, project: str, now: int) -> tuple[str, bool]:
    """The dev key `make run` prints: the one kept in `keep` while it still works, else a new one.

    Returns (the key, whether it is new). The plain key is kept (mode 0600, beside the signing keys)
    only for this dev key, so that restarting `make run` does not invalidate a key already in use.
    """
    with locked(path.parent):  # two `make run`s at once make one dev key, not two
        try:
            kept = keep.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            kept = ""
        if kept:
            stored = {key.digest: key for key in read_keys(path)}.get(digest(kept))
            if stored is not None and stored.project == project and stored.refusal(now) is None:
                return kept, False
        # The earlier dev key (revoked, expired or of another project) stays listed, as any key does.
        plain, _ = _add_key(path, project=project, kind="runtime", now=now, label="make-run", expires_at=None)
        atomic_write(keep, (plain + "\n").encode("utf-8"), mode=0o600)
        return plain, True
