"""Writing a keys directory: `make keys`, `make rotate`, `make retire`; each change all-or-nothing.

Private key files are written (atomically) before the manifest names them and deleted only after the
manifest dropped them; the manifest itself is replaced in one rename (see `app.tickets.keys` for the format).
Each change holds an exclusive lock on `<keys dir>/.lock` (flock) from reading the manifest to writing
it, so two commands run at once (two minters' cron jobs) make two clean changes, never lose one.

A rotation promotes the `next` key only once it has been published (its `created_at`: the manifest
naming it was written then) for long enough that every JWKS edge has fetched it: otherwise tickets it
signs would meet edges that do not know it yet.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.exceptions import KeySetError
from app.tickets.base64url import b64url
from app.tickets.keyfiles import atomic_write, locked
from app.tickets.keys import MANIFEST, MAX_TICKET_SECONDS, KeySet, SigningKey, State, promote, thumbprint
from app.tickets.sealkeys import SEAL_FILE, ensure_seal_keys, rotate_seal_keys

#: A minter notices a changed keys directory within this long (`DirectoryKeySource`).
DIRECTORY_CHECK_SECONDS = 0.5


def publish_wait(*, configured: int, refresh_interval: float, fetch_timeout: float) -> int:
    """Seconds a `next` key must have been published before a rotation may promote it.

    `REALTIME_KEY_PUBLISH_SECONDS`, but never less than a JWKS edge needs to have fetched it: the
    minter's reload, the edges' poll interval and one fetch's timeout.
    """
    floor = math.ceil(DIRECTORY_CHECK_SECONDS + refresh_interval + fetch_timeout)
    return max(configured, floor)


def _new_key(state: State, now: int, directory: Path) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = b64url(raw)
    key = SigningKey(thumbprint(x), state, private.public_key(), x, now, now, private)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(directory / f"{key.kid}.pem", pem, mode=0o600)
    return key


def _write_manifest(directory: Path, keys: Iterable[SigningKey]) -> None:
    body = {"keys": [key.manifest_entry() for key in keys]}
    atomic_write(directory / MANIFEST, (json.dumps(body, indent=2) + "\n").encode("utf-8"))


def _load_or_empty(directory: Path) -> KeySet:
    return KeySet.load(directory) if (directory / MANIFEST).exists() else KeySet.empty()


def ensure_keys(directory: Path, *, now: int) -> tuple[KeySet, bool]:
    """`make keys`: make an `active` and a `next` key where missing. Returns (set, changed)."""
    with locked(directory):
        return _ensure_keys(directory, now=now)


def _ensure_keys(directory: Path, *, now: int) -> tuple[KeySet, bool]:
    keys = list(_load_or_empty(directory).keys)
    changed = False
    if not any(key.state == "active" for key in keys):
        keys.append(_new_key("active", now, directory))
        changed = True
    if not any(key.state == "next" for key in keys):
        keys.append(_new_key("next", now, directory))
        changed = True
    if changed:
        _write_manifest(directory, keys)
    _, sealed = ensure_seal_keys(directory / SEAL_FILE, now=now)  # seal keys: same life cycle
    return KeySet(tuple(keys)), changed or sealed


def rotate(directory: Path, *, now: int, min_published: int = 0) -> KeySet:
    """`make rotate`: next -> active, active -> retiring, and a new next.

    The new key's file is written first and the manifest last, in one rename: a crash before the
    rename leaves the old set whole (plus an unused key file), after it the new set.

    Raises:
        KeySetError: nothing to rotate, or the `next` key was published less than `min_published`
            seconds ago (`make rotate FORCE=1` passes 0).
    """
    with locked(directory):
        return _rotate(directory, now=now, min_published=min_published)


def _rotate(directory: Path, *, now: int, min_published: int) -> KeySet:
    current = _load_or_empty(directory)
    if not current.in_state("next") or not current.in_state("active"):
        raise KeySetError(f"{directory} has no active and next key to rotate: run `make keys`")
    promoted = current.in_state("next")[0]
    if promoted.private_key is None:
        raise KeySetError(f"the next key {promoted.kid} has no private key file")
    published = max(0, now - promoted.created_at)  # < 0: the clock stepped back; count it as new
    if min_published > 0 and published < min_published:
        raise KeySetError(
            f"refused: the next key {promoted.kid} was published {published}s ago, and JWKS "
            f"edges may not have fetched it yet: tickets it signs could be refused with unknown_key. "
            f"Rotate again in {min_published - published}s (a next key must be published for "
            f"{min_published}s: REALTIME_KEY_PUBLISH_SECONDS), or now with `make rotate FORCE=1`"
        )
    fresh = _new_key("next", now, directory)
    keys = promote(current.keys, promoted.kid, now=now)
    keys.append(fresh)
    _write_manifest(directory, keys)
    rotate_seal_keys(directory / SEAL_FILE, now=now)  # seal keys: same life cycle
    return KeySet(tuple(keys))


def retire_after(*, leeway: int, grace: int) -> int:
    """Seconds a key must have stopped signing before `make retire` deletes it."""
    return MAX_TICKET_SECONDS + leeway + grace


def retire(directory: Path, *, now: int, min_age: int, force: bool = False) -> list[SigningKey]:
    """`make retire`: drop `retiring` keys that stopped signing `min_age` seconds ago (all: `force`).

    The manifest is rewritten first, then the private key files are removed.
    """
    with locked(directory):
        return _retire(directory, now=now, min_age=min_age, force=force)


def _retire(directory: Path, *, now: int, min_age: int, force: bool) -> list[SigningKey]:
    current = KeySet.load(directory)
    gone = [key for key in current.in_state("retiring") if force or now - key.state_since >= min_age]
    if gone:
        _write_manifest(directory, [key for key in current.keys if key not in gone])
        for key in gone:
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{key.kid}.pem").unlink()
    return gone
