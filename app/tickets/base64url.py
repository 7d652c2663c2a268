"""base64url without padding (RFC 7515 section 2): the one encoder, and a strict decoder."""

from __future__ import annotations

import binascii

_URLSAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# The bits of the last character that carry no data, by the segment's length modulo 4: they must
# be zero, or the same bytes would have a second spelling.
_UNUSED_BITS = (0, 0, 0x0F, 0x03)


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """Encode `data` as base64url with the padding stripped (binascii directly: `base64`'s wrappers
    cost more than the encoding of a ticket's short parts)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode strict base64url: the URL-safe alphabet only, no padding, canonical trailing bits.

    The checks are C-speed byte operations (deleting the alphabet leaves nothing; the last
    character's unused bits are zero) rather than a regular expression and a second encoding: the
    signature and payload of every ticket pass through here on the handshake.

    Raises:
        ValueError: `segment` is not strict base64url.
    """
    if not segment.isascii():
        raise ValueError("not base64url")
    raw = segment.encode("ascii")
    rest = len(raw) % 4
    if rest == 1 or raw.translate(None, _URLSAFE):
        raise ValueError("not base64url")
    if rest and _URLSAFE.index(raw[-1]) & _UNUSED_BITS[rest]:
        raise ValueError("not canonical base64url")
    try:
        return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=="[: -rest % 4], strict_mode=True)
    except binascii.Error:  # not reached for a string that passed the checks above
        raise ValueError("not base64url") from None
