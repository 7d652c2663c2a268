"""Signing key set: load, sign with the active key, look up by kid.

Writing (make keys, rotate, retire) is in `app.tickets.rotation`, hot reload in `app.tickets.keysource`, and
the command line (`python -m app.keys`) in `app/ops/keys.py`, so that nothing here imports them.

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
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

from app.exceptions import KeySetError
from app.tickets.base64url import b64url, b64url_decode

State = Literal["next", "active", "retiring"]
STATES: tuple[State, ...] = ("next", "active", "retiring")


class _StagedKey(Protocol):
    """A key with a place in the life cycle: a signing key or a seal key (frozen dataclasses)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def kid(self) -> str: ...

    @property
    def state(self) -> State: ...


StagedKey = TypeVar("StagedKey", bound=_StagedKey)


def promote(keys: Iterable[StagedKey], kid: str, *, now: int) -> list[StagedKey]:
    """One rotation step: `kid` (the next key) becomes active, the active key retiring; others stay."""
    stepped = []
    for key in keys:
        if key.kid == kid:
            stepped.append(replace(key, state="active", state_since=now))
        elif key.state == "active":
            stepped.append(replace(key, state="retiring", state_since=now))
        else:
            stepped.append(key)
    return stepped


MANIFEST = "jwks.json"
#: A ticket lives at most this long (docs/api.md), so a retiring key is needed this long at least.
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

    def __post_init__(self) -> None:
        # Signatures are made and checked by libsodium (PyNaCl), about 1.1x and 1.4x faster than
        # OpenSSL here, and stricter: it refuses a non-canonical `S` and small-order public keys and
        # `R` (docs/decisions.md). Its raw key bytes are taken once, when the key is loaded.
        object.__setattr__(self, "_public", self.public_key.public_bytes_raw())
        secret = None
        if self.private_key is not None:
            _, secret = sodium.crypto_sign_seed_keypair(self.private_key.private_bytes_raw())
        object.__setattr__(self, "_secret", secret)

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature (RFC 8032) of `message`, 64 bytes; ValueError without a private key."""
        secret: bytes | None = self._secret  # type: ignore[attr-defined]
        if secret is None:
            raise ValueError(f"key {self.kid} cannot sign: no private key")
        return sodium.crypto_sign(message, secret)[: sodium.crypto_sign_BYTES]

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message` (RFC 8032, strictly)."""
        if len(signature) != sodium.crypto_sign_BYTES:
            return False
        try:
            sodium.crypto_sign_open(signature + message, self._public)  # type: ignore[attr-defined]
        except BadSignatureError:
            return False
        return True

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
