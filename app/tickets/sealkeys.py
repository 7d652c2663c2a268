"""Seal keys: the symmetric keys that encrypt tickets, kept in `seal.json` beside the signing keys.

`seal.json` is a JWK set (RFC 7517) of `kty: oct` 256-bit keys, each with `kid`, `k` (the secret,
base64url) and the members this service adds (`state`, `created_at`, `state_since`). States and life
cycle are those of the signing keys: `next` (decrypts, does not seal yet), `active` (seals and
decrypts), `retiring` (decrypts only), then removed. The file is secret: mode 0600, replaced in one
atomic rename, never served over HTTP, never put in the JWKS, never logged (a `SealKey`'s repr
leaves the secret out).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.exceptions import KeySetError
from app.tickets.base64url import b64url, b64url_decode
from app.tickets.keyfiles import atomic_write
from app.tickets.keys import STATES, State, promote

SEAL_FILE = "seal.json"
SEAL_ALGORITHM = "A256KW"
KEY_BYTES = 32


@dataclass(frozen=True)
class SealKey:
    """One seal key. `secret` is the raw 256-bit AES key (left out of the repr)."""

    kid: str
    state: State
    secret: bytes = field(repr=False)
    created_at: int
    state_since: int

    def file_entry(self) -> dict[str, Any]:
        return {
            "kty": "oct",
            "kid": self.kid,
            "k": b64url(self.secret),
            "alg": SEAL_ALGORITHM,
            "use": "enc",
            "state": self.state,
            "created_at": self.created_at,
            "state_since": self.state_since,
        }


@dataclass(frozen=True)
class SealKeySet:
    """An immutable seal key set: lookups by kid and the key that seals."""

    keys: tuple[SealKey, ...]

    def __post_init__(self) -> None:
        by_kid = {key.kid: key for key in self.keys}
        if len(by_kid) != len(self.keys):
            raise KeySetError("the seal key set names a kid twice")
        object.__setattr__(self, "_by_kid", by_kid)

    def get(self, kid: str) -> SealKey | None:
        """The seal key `kid` (any state), or None."""
        by_kid: dict[str, SealKey] = self._by_kid  # type: ignore[attr-defined]
        return by_kid.get(kid)

    @property
    def sealer(self) -> SealKey | None:
        """The active key, which seals new tickets; None when there is none."""
        return next((key for key in self.keys if key.state == "active"), None)

    def in_state(self, state: State) -> list[SealKey]:
        return [key for key in self.keys if key.state == state]

    @classmethod
    def empty(cls) -> SealKeySet:
        return cls(keys=())

    @classmethod
    def load(cls, path: Path) -> SealKeySet:
        """Read a seal key file.

        Raises:
            KeySetError: the file is missing, unreadable or malformed (the message never holds a key).
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeySetError(f"no seal keys at {path}: run `make keys`") from None
        except (OSError, ValueError) as exc:
            raise KeySetError(f"cannot read {path}: {type(exc).__name__}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise KeySetError(f"{path}: expected an object with a `keys` list")
        return cls(keys=tuple(_entry_to_key(entry, str(path)) for entry in entries))


def _entry_to_key(entry: object, where: str) -> SealKey:
    if not isinstance(entry, dict):
        raise KeySetError(f"{where}: every seal key must be an object")
    kid, k, state = entry.get("kid"), entry.get("k"), entry.get("state")
    created, since = entry.get("created_at"), entry.get("state_since")
    if entry.get("kty") != "oct" or not isinstance(kid, str) or not kid or state not in STATES:
        raise KeySetError(f"{where}: a seal key lacks `kty: oct`, a `kid` or a valid `state`")
    if not isinstance(created, int) or not isinstance(since, int):
        raise KeySetError(f"{where}: seal key {kid} lacks `created_at`/`state_since`")
    try:
        secret = b64url_decode(k) if isinstance(k, str) else b""
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise KeySetError(f"{where}: seal key {kid} is not a 256-bit key in base64url")
    return SealKey(kid, state, secret, created, since)


# Writing: `make keys`, `make rotate`, `make retire` ---------------------------------------------


def _new_key(state: State, now: int) -> SealKey:
    # A random kid: it is visible in every sealed ticket and must say nothing about the key.
    return SealKey(f"seal-{secrets.token_urlsafe(12)}", state, secrets.token_bytes(KEY_BYTES), now, now)


def _write(path: Path, keys: list[SealKey]) -> None:
    body = {"keys": [key.file_entry() for key in keys]}
    atomic_write(path, (json.dumps(body, indent=2) + "\n").encode("utf-8"), mode=0o600)


def _load_or_empty(path: Path) -> SealKeySet:
    return SealKeySet.load(path) if path.exists() else SealKeySet.empty()


def ensure_seal_keys(path: Path, *, now: int) -> tuple[SealKeySet, bool]:
    """`make keys`: an `active` and a `next` seal key where missing. Returns (set, changed)."""
    keys = list(_load_or_empty(path).keys)
    missing = [state for state in ("active", "next") if not any(key.state == state for key in keys)]
    keys += [_new_key(state, now) for state in missing]  # type: ignore[arg-type]
    if missing:
        _write(path, keys)
    return SealKeySet(tuple(keys)), bool(missing)


def rotate_seal_keys(path: Path, *, now: int) -> SealKeySet:
    """`make rotate`: next -> active, active -> retiring, and a new next (one atomic write).

    A directory made before seal keys existed gets its first pair instead.
    """
    current = _load_or_empty(path)
    if not current.in_state("next") or not current.in_state("active"):
        return ensure_seal_keys(path, now=now)[0]
    promoted = current.in_state("next")[0]
    keys = promote(current.keys, promoted.kid, now=now)
    keys.append(_new_key("next", now))
    _write(path, keys)
    return SealKeySet(tuple(keys))


def retire_seal_keys(path: Path, *, now: int, min_age: int, force: bool = False) -> list[SealKey]:
    """`make retire`: drop `retiring` seal keys that stopped sealing `min_age` seconds ago (all: `force`)."""
    if not path.exists():
        return []
    current = SealKeySet.load(path)
    gone = [key for key in current.in_state("retiring") if force or now - key.state_since >= min_age]
    if gone:
        _write(path, [key for key in current.keys if key not in gone])
    return gone
