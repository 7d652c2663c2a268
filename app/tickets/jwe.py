"""Sealing: a compact JWE (RFC 7516) around a signed ticket, `A256KW` + `A256GCM`; pure functions.

Each ticket gets a fresh random 256-bit content key, wrapped with the seal key by AES Key Wrap
(RFC 3394, RFC 7518 section 4.4), so the long-lived seal key never meets a GCM nonce; the content
is encrypted with AES-GCM under a random 96-bit IV, the encoded protected header as its additional
data (RFC 7516 section 5.1). The framing is built here on `cryptography`'s primitives so that the
outer header can be held to the same rules as the inner one: exactly four members, fixed values,
strict base64url, exact part lengths, and no `zip`.
"""

from __future__ import annotations

import functools
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from app.exceptions import InvalidTicketError, UnknownKeyError
from app.tickets.base64url import b64url
from app.tickets.sealkeys import SEAL_ALGORITHM, SealKey, SealKeySet
from app.tickets.segments import json_object, segment_bytes

ENCRYPTION = "A256GCM"
CONTENT_TYPE = "JWT"  # a nested JWT (RFC 7519 section 5.2)
HEADER_MEMBERS = frozenset({"alg", "enc", "kid", "cty"})
CONTENT_KEY_BYTES = 32  # a fresh key per ticket
WRAPPED_KEY_BYTES = 40  # a 256-bit key plus the 64-bit integrity check value of RFC 3394
IV_BYTES = 12
TAG_BYTES = 16


@functools.lru_cache(maxsize=16)
def _header_segment(kid: str) -> str:
    """The encoded protected header of `kid`'s tickets: the same bytes for every ticket it seals."""
    header = {"alg": SEAL_ALGORITHM, "enc": ENCRYPTION, "kid": kid, "cty": CONTENT_TYPE}
    return b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))


def seal(plaintext: bytes, key: SealKey) -> str:
    """Encrypt `plaintext` (a compact JWS) for the holders of `key`: a five-part compact JWE."""
    header = _header_segment(key.kid)
    # The content key and the IV from one read of the system's CSPRNG (what `secrets` reads too).
    fresh = os.urandom(CONTENT_KEY_BYTES + IV_BYTES)
    content_key, iv = fresh[:CONTENT_KEY_BYTES], fresh[CONTENT_KEY_BYTES:]
    sealed = AESGCM(content_key).encrypt(iv, plaintext, header.encode("ascii"))
    return ".".join(
        (
            header,
            b64url(aes_key_wrap(key.secret, content_key)),
            b64url(iv),
            b64url(sealed[:-TAG_BYTES]),
            b64url(sealed[-TAG_BYTES:]),
        )
    )


def _decode(segment: str, what: str, size: int | None = None) -> bytes:
    data = segment_bytes(segment, what)
    if size is not None and len(data) != size:
        raise InvalidTicketError(f"the sealed ticket's {what} is not {size} bytes")
    return data


def unseal(parts: list[str], keys: SealKeySet) -> bytes:
    """Decrypt the five `parts` of a compact JWE and return the plaintext (the signed ticket).

    Raises:
        UnknownKeyError: (`sealed=True`) a string `kid` that is not in `keys`.
        InvalidTicketError: a header that is not exactly `alg: A256KW`, `enc: A256GCM`, `kid`,
            `cty: JWT`; a part that is not strict base64url or has the wrong length; a key that
            does not unwrap or a tag that does not verify.
    """
    header, wrapped, iv, ciphertext, tag = parts
    kid = _header_kid(header)
    key = keys.get(kid)
    if key is None:
        raise UnknownKeyError(kid, sealed=True)
    wrapped_key = _decode(wrapped, "encrypted key", WRAPPED_KEY_BYTES)
    nonce = _decode(iv, "IV", IV_BYTES)
    body = _decode(ciphertext, "ciphertext")
    mac = _decode(tag, "tag", TAG_BYTES)
    if not body:
        raise InvalidTicketError("the sealed ticket is empty")
    try:
        content_key = aes_key_unwrap(key.secret, wrapped_key)
        return AESGCM(content_key).decrypt(nonce, body + mac, header.encode("ascii"))
    except (InvalidUnwrap, InvalidTag):
        raise InvalidTicketError("the sealed ticket does not decrypt") from None


@functools.lru_cache(maxsize=64)
def _header_kid(segment: str) -> str:
    """The seal `kid` of an encoded JWE header that passes every header rule (remembered when it does)."""
    header = json_object(segment_bytes(segment, "JWE header"), "JWE header")
    extra = sorted(set(header) - HEADER_MEMBERS)
    if extra:
        # `zip` among them: nothing is compressed before encryption (RFC 8725 section 3.6).
        raise InvalidTicketError(f"the ticket's JWE header has members that are not allowed: {extra}")
    if header.get("alg") != SEAL_ALGORITHM or header.get("enc") != ENCRYPTION:
        raise InvalidTicketError(f"the sealed ticket must use {SEAL_ALGORITHM} with {ENCRYPTION}")
    if header.get("cty") != CONTENT_TYPE:
        raise InvalidTicketError(f"the sealed ticket's `cty` must be {CONTENT_TYPE}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidTicketError("the ticket's JWE header has no string `kid`")
    return kid
