"""Writing a keys directory: `make keys`, `make rotate`, `make retire`; each change all-or-nothing.

Private key files are written (atomically) before the manifest names them and deleted only after the
manifest dropped them; the manifest itself is replaced in one rename (see `app.keys` for the format).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.base64url import b64url
from app.exceptions import KeySetError
from app.files import atomic_write
from app.keys import MANIFEST, MAX_TICKET_SECONDS, KeySet, SigningKey, State, thumbprint
from app.sealkeys import SEAL_FILE, ensure_seal_keys, rotate_seal_keys


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


def rotate(directory: Path, *, now: int) -> KeySet:
    """`make rotate`: next -> active, active -> retiring, and a new next.

    The new key's file is written first and the manifest last, in one rename: a crash before the
    rename leaves the old set whole (plus an unused key file), after it the new set.
    """
    current = _load_or_empty(directory)
    if not current.in_state("next") or not current.in_state("active"):
        raise KeySetError(f"{directory} has no active and next key to rotate: run `make keys`")
    promoted = current.in_state("next")[0]
    if promoted.private_key is None:
        raise KeySetError(f"the next key {promoted.kid} has no private key file")
    fresh = _new_key("next", now, directory)
    keys: list[SigningKey] = []
    for key in current.keys:
        if key.kid == promoted.kid:
            keys.append(replace(key, state="active", state_since=now))
        elif key.state == "active":
            keys.append(replace(key, state="retiring", state_since=now))
        else:
            keys.append(key)
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
    current = KeySet.load(directory)
    gone = [key for key in current.in_state("retiring") if force or now - key.state_since >= min_age]
    if gone:
        _write_manifest(directory, [key for key in current.keys if key not in gone])
        for key in gone:
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{key.kid}.pem").unlink()
    return gone
