"""Signing key set: load, sign with the active key, look up by kid; `python -m app.keys`.

Writing (make keys, rotate, retire) is in `app.rotation`, hot reload in `app.keysource`.

On disk (`keys/` or `REALTIME_KEYS_DIR`):

- `jwks.json`: the manifest. A JWKS whose keys carry three extra members (`state`, `created_at`,
  `state_since`); RFC 7517 section 4 lets a JWK carry members a reader does not know. It is the single
  source of truth, replaced in one atomic rename, so every change is all-or-nothing.
- `<kid>.pem`: each private key, PKCS#8 PEM, mode 0600. Written (atomically) before the manifest names
  it and deleted only after the manifest dropped it, so a crash leaves at worst an unused file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.base64url import b64url, b64url_decode
from app.exceptions import KeySetError

State = Literal["next", "active", "retiring"]
STATES: tuple[State, ...] = ("next", "active", "retiring")
MANIFEST = "jwks.json"
#: A ticket lives at most this long (SPEC section 3), so a retiring key is needed this long at least.
MAX_TICKET_SECONDS = 300


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
        return Ed25519PublicKey.from_public_bytes(b64url_decode(x))
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
    from app.rotation import ensure_keys, publish_wait, retire, retire_after, rotate

    parser = argparse.ArgumentParser(prog="python -m app.keys", description=__doc__)
    parser.add_argument("command", choices=["init", "rotate", "retire", "status", "jwks"])
    parser.add_argument(
        "--force",
        action="store_true",
        help="retire: delete every retiring key; rotate: promote the next key however recently "
        "it was published",
    )
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
            _print_status(keyset, stamp, directory)
        elif args.command == "rotate":
            wait = publish_wait(
                configured=settings.key_publish_seconds,
                refresh_interval=settings.jwks_refresh_interval_seconds,
                fetch_timeout=settings.jwks_timeout_seconds,
            )
            keyset = rotate(directory, now=stamp, min_published=0 if args.force else wait)
            signer = keyset.in_state("active")[0]
            print(f"rotated: {signer.kid} signs now; running servers pick it up without a restart")
            _print_status(keyset, stamp, directory)
        elif args.command == "retire":
            wait = retire_after(leeway=settings.leeway_seconds, grace=settings.retire_grace_seconds)
            gone = retire(directory, now=stamp, min_age=wait, force=args.force)
            for key in gone:
                print(f"retired {key.kid}")
            left = KeySet.load(directory).in_state("retiring")
            for key in left:
                print(f"kept {key.kid}: retiring for {_age(stamp - key.state_since)}, needs {wait}s")
            sealed_gone, sealed_left = _retire_seal_keys(directory, stamp, wait, force=args.force)
            if not gone and not left and not sealed_gone and not sealed_left:
                print("no retiring keys")
        elif args.command == "status":
            _print_status(KeySet.load(directory), stamp, directory)
        else:
            print(json.dumps(KeySet.load(directory).jwks(), indent=2))
    except (KeySetError, SettingsError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _print_status(keyset: KeySet, now: int, directory: Path) -> None:
    for state in STATES:
        for key in keyset.in_state(state):
            print(
                f"{state:<9} {key.kid}  created {_age(now - key.created_at)} ago, "
                f"{state} for {_age(now - key.state_since)}"
            )
    _print_seal_status(directory, now)


# Seal keys (`seal.json`, see app.sealkeys) share the commands above; their secrets are never printed.


def _print_seal_status(directory: Path, now: int) -> None:
    from app.sealkeys import SEAL_FILE, SealKeySet

    path = directory / SEAL_FILE
    if not path.exists():
        print(f"no seal keys ({path}): sealed tickets cannot be issued; run `make keys`")
        return
    seal_keys = SealKeySet.load(path)
    for state in STATES:
        for key in seal_keys.in_state(state):
            print(
                f"{state:<9} {key.kid}  seal key, created {_age(now - key.created_at)} ago, "
                f"{state} for {_age(now - key.state_since)}"
            )


def _retire_seal_keys(directory: Path, now: int, wait: int, *, force: bool) -> tuple[list[str], list[str]]:
    from app.sealkeys import SEAL_FILE, SealKeySet, retire_seal_keys

    path = directory / SEAL_FILE
    gone = [key.kid for key in retire_seal_keys(path, now=now, min_age=wait, force=force)]
    for kid in gone:
        print(f"retired seal key {kid}")
    left = SealKeySet.load(path).in_state("retiring") if path.exists() else []
    for key in left:
        print(f"kept seal key {key.kid}: retiring for {_age(now - key.state_since)}, needs {wait}s")
    return gone, [key.kid for key in left]


if __name__ == "__main__":
    sys.exit(main())
