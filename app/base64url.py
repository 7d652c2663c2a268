"""base64url without padding (RFC 7515 section 2): the one encoder, and a strict decoder."""

from __future__ import annotations

import base64
import binascii
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def b64url(data: bytes) -> str:
    """Encode `data` as base64url with the padding stripped."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode strict base64url: the URL-safe alphabet only, no padding, canonical trailing bits.

    Raises:
        ValueError: `segment` is not strict base64url.
    """
    if len(segment) % 4 == 1 or not _ALPHABET.fullmatch(segment):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None
    if b64url(data) != segment:  # other trailing bits would give a second spelling of the same bytes
        raise ValueError("not canonical base64url")
    return data
