"""Reading the parts of a compact ticket strictly: base64url bytes, then one JSON object."""

from __future__ import annotations

import json
import math
from typing import Any

from app.base64url import b64url_decode
from app.exceptions import InvalidTicketError


def segment_bytes(segment: str, what: str) -> bytes:
    """The bytes of one part; `what` names it in the error.

    Raises:
        InvalidTicketError: not strict base64url (alphabet, padding, trailing bits).
    """
    try:
        return b64url_decode(segment)
    except ValueError:
        raise InvalidTicketError(f"the ticket's {what} is not strict base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # `1e400` parses to infinity
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: `json.loads` with options builds a new decoder on every call. Integers longer than
# Python's limit (4300 digits) raise ValueError in the decoder itself.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=_finite, parse_constant=_no_constant
)


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """The JSON object in `data` (UTF-8, no duplicate names, finite numbers only).

    Raises:
        InvalidTicketError: anything else, nesting too deep for the parser included.
    """
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidTicketError(f"the ticket's {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidTicketError(f"the ticket's {what} is not a JSON object")
    return value
