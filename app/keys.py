"""Signing key set: load, sign with the active key, look up by kid, rotate and retire; `python -m app.keys`.

On disk (`keys/` or `REALTIME_KEYS_DIR`):

- `jwks.json`: the manifest. A JWKS whose keys carry three extra members (`state`, `created_at`,
  `state_since`); RFC 7517 section 4 lets a JWK carry members a reader does not know. It is the single
  source of truth, replaced in one atomic rename, so every change is all-or-nothing.
- `<kid>.pem`: each private key, PKCS#8 PEM, mode 0600. Written (atomically) before the manifest names
  it and deleted only after the manifest dropped it, so a crash leaves at worst an unused file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.exceptions import KeySetError
from app.files import Stamp, atomic_write, stamp

State = Literal["next", "active", "retiring"]
STATES: tuple[State, ...] = ("next", "active", "retiring")
MANIFEST = "jwks.json"
#: A ticket lives at most this long (SPEC section 3), so a retiring key is needed this long at least.
MAX_TICKET_SECONDS = 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(x: str) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 public key: the required members, sorted, no spaces."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class SigningKey:
    """One key of the set. `private_key` is None on a verify-only node."""

    kid: str
    state: State
    public_key: Ed25519PublicKey
    x: str
    created_at: int
    state_since: int
    private_key: Ed25519PrivateKey | None = None

    def public_jwk(self) -> dict[str, str]:
        """The JWK served to verifiers: nothing private, nothing of ours."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    def manifest_entry(self) -> dict[str, Any]:
        return {
            **self.public_jwk(),
            "state": self.state,
            "created_at": self.created_at,
            "state_since": self.state_since,
        }


def _public_from_x(x: str, where: str) -> Ed25519PublicKey:
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeySetError(f"{where}: not an Ed25519 public key ({exc})") from None


@dataclass(frozen=True)
class KeySet:
    """An immutable key set: lookups by kid and the key that signs."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        kids = [key.kid for key in self.keys]
        if len(set(kids)) != len(kids):
            raise KeySetError("the key set names a kid twice")
        object.__setattr__(self, "_by_kid", {key.kid: key for key in self.keys})

    def get(self, kid: str) -> SigningKey | None:
        """The verification key for `kid` (any state), or None."""
        by_kid: dict[str, SigningKey] = self._by_kid  # type: ignore[attr-defined]
        return by_kid.get(kid)

    @property
    def signer(self) -> SigningKey | None:
        """The active key with its private half, or None on a verify-only node."""
        for key in self.keys:
            if key.state == "active" and key.private_key is not None:
                return key
        return None

    def in_state(self, state: State) -> list[SigningKey]:
        return [key for key in self.keys if key.state == state]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWKS: `next`, `active` and `retiring` keys."""
        return {"keys": [key.public_jwk() for key in self.keys]}

    @classmethod
    def empty(cls) -> KeySet:
        return cls(keys=())

    @classmethod
    def load(cls, directory: Path) -> KeySet:
        """Read `jwks.json` and the private keys next to it.

        Raises:
            KeySetError: the manifest is missing or malformed, or an active key lacks its private key.
        """
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeySetError(f"no key set at {path}: run `make keys`") from None
        except (OSError, ValueError) as exc:
            raise KeySetError(f"cannot read {path}: {exc}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise KeySetError(f"{path}: expected an object with a `keys` list")
        keys = []
        for entry in entries:
            key = _entry_to_key(entry, str(path))
            pem = directory / f"{key.kid}.pem"
            if pem.exists():
                key = replace(key, private_key=_read_private(pem, key))
            elif key.state == "active":
                raise KeySetError(f"the active key {key.kid} has no private key file {pem}")
            keys.append(key)
        return cls(keys=tuple(keys))

    @classmethod
    def from_jwks(cls, data: object) -> KeySet:
        """A verify-only set from a public JWKS document (ignores keys that are not Ed25519)."""
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise KeySetError("JWKS: expected an object with a `keys` list")
        keys = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("crv") != "Ed25519":
                continue
            kid, x = entry.get("kid"), entry.get("x")
            if not isinstance(kid, str) or not isinstance(x, str):
                raise KeySetError("JWKS: every key needs a string `kid` and `x`")
            public = _public_from_x(x, f"JWKS key {kid}")
            keys.append(SigningKey(kid, "active", public, x, 0, 0))
        return cls(keys=tuple(keys))


def _entry_to_key(entry: object, where: str) -> SigningKey:
    if not isinstance(entry, dict):
        raise KeySetError(f"{where}: every key must be an object")
    kid, x, state = entry.get("kid"), entry.get("x"), entry.get("state")
    created, since = entry.get("created_at"), entry.get("state_since")
    if not isinstance(kid, str) or not isinstance(x, str) or state not in STATES:
        raise KeySetError(f"{where}: a key lacks `kid`, `x` or a valid `state`")
    if not isinstance(created, int) or not isinstance(since, int):
        raise KeySetError(f"{where}: key {kid} lacks `created_at`/`state_since`")
    if thumbprint(x) != kid:
        raise KeySetError(f"{where}: key {kid} does not match its thumbprint")
    return SigningKey(kid, state, _public_from_x(x, where), x, created, since)


def _read_private(pem: Path, key: SigningKey) -> Ed25519PrivateKey:
    try:
        private = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeySetError(f"cannot read private key {pem}: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeySetError(f"{pem} is not an Ed25519 private key")
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if b64url(raw) != key.x:
        raise KeySetError(f"{pem} does not match the public key of {key.kid}")
    return private


# Writing ------------------------------------------------------------------------------------


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
    return KeySet(tuple(keys)), changed


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


# Hot reload ---------------------------------------------------------------------------------


class KeySource(Protocol):
    """Where a process gets its key set: a keys directory, or a minter's JWKS URL."""

    def current(self) -> KeySet:
        """The set to use now (cheap; may look for changes now and then)."""
        ...

    async def refresh(self) -> KeySet:
        """Look for a newer set now, rate-limited: called on an unknown kid."""
        ...

    async def aclose(self) -> None: ...


class DirectoryKeySource:
    """The key set of a keys directory, reloaded when `jwks.json` changes.

    `current()` looks at the manifest's stat at most every `check_interval` seconds, so a
    `make rotate` reaches a running server within that time, and `refresh()` (on an unknown kid)
    looks at once, at most once per `check_interval`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 0.5,
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._interval = check_interval
        self._keys = KeySet.empty()
        self._stamp: Stamp | None = None
        self._checked = float("-inf")
        self._refreshed = float("-inf")
        self.reloads = 0

    def _stat(self) -> Stamp | None:
        return stamp(self.directory / MANIFEST)

    def load(self) -> KeySet:
        """Load now (start-up); raises KeySetError when the set is missing or broken."""
        current = self._stat()
        self._keys = KeySet.load(self.directory)
        self._stamp = current
        self._checked = self._clock()
        self.reloads += 1
        return self._keys

    def _reload_if_changed(self) -> None:
        self._checked = self._clock()
        current = self._stat()
        if current is None or current == self._stamp:
            return
        try:
            self.load()
        except KeySetError:
            # A half-edited set by hand: keep serving with the last good one.
            self._stamp = current

    def current(self) -> KeySet:
        elapsed = self._clock() - self._checked
        if elapsed >= self._interval or elapsed < 0:  # < 0: the wall clock stepped back
            self._reload_if_changed()
        return self._keys

    async def refresh(self) -> KeySet:
        """Look for a newer set now (unknown kid), rate-limited."""
        now = self._clock()
        if not 0 <= now - self._refreshed < self._interval:
            self._refreshed = now
            self._reload_if_changed()
        return self._keys

    async def aclose(self) -> None:
        return None


# Command line -------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def main(argv: Sequence[str] | None = None, *, now: Callable[[], float] = time.time) -> int:
    """`python -m app.keys {init,rotate,retire [--force],status,jwks}`."""
    import argparse

    from app.config import Settings
    from app.exceptions import SettingsError

    parser = argparse.ArgumentParser(prog="python -m app.keys", description=__doc__)
    parser.add_argument("command", choices=["init", "rotate", "retire", "status", "jwks"])
    parser.add_argument("--force", action="store_true", help="retire: delete every retiring key")
    parser.add_argument("--dir", type=Path, help="keys directory (default: REALTIME_KEYS_DIR)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
        directory: Path = args.dir or settings.keys_dir
        stamp = int(now())
        if args.command == "init":
            keyset, changed = ensure_keys(directory, now=stamp)
            verb = "created" if changed else "already present"
            print(f"keys {verb} in {directory}")
            _print_status(keyset, stamp)
        elif args.command == "rotate":
            keyset = rotate(directory, now=stamp)
            signer = keyset.in_state("active")[0]
            print(f"rotated: {signer.kid} signs now; running servers pick it up without a restart")
            _print_status(keyset, stamp)
        elif args.command == "retire":
            wait = retire_after(leeway=settings.leeway_seconds, grace=settings.retire_grace_seconds)
            gone = retire(directory, now=stamp, min_age=wait, force=args.force)
            for key in gone:
                print(f"retired {key.kid}")
            left = KeySet.load(directory).in_state("retiring")
            for key in left:
                print(f"kept {key.kid}: retiring for {_age(stamp - key.state_since)}, needs {wait}s")
            if not gone and not left:
                print("no retiring keys")
        elif args.command == "status":
            _print_status(KeySet.load(directory), stamp)
        else:
            print(json.dumps(KeySet.load(directory).jwks(), indent=2))
    except (KeySetError, SettingsError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _print_status(keyset: KeySet, now: int) -> None:
    for state in STATES:
        for key in keyset.in_state(state):
            print(
                f"{state:<9} {key.kid}  created {_age(now - key.created_at)} ago, "
                f"{state} for {_age(now - key.state_since)}"
            )


if __name__ == "__main__":
    sys.exit(main())
