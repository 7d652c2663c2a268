"""Reading the parts of a compact ticket strictly: base64url bytes, then one JSON object."""

from __future__ import annotations

from typing import Any

from app import strictjson
from app.exceptions import InvalidTicketError
from app.tickets.base64url import b64url_decode


def segment_bytes(segment: str, what: str) -> bytes:
    """The bytes of one part; `what` names it in the error.

    Raises:
        InvalidTicketError: not strict base64url (alphabet, padding, trailing bits).
    """
    try:
        return b64url_decode(segment)
    except ValueError:
        raise InvalidTicketError(f"the ticket's {what} is not strict base64url") from None


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """The JSON object in `data` (UTF-8, no duplicate names, finite numbers only).

    Raises:
        InvalidTicketError: anything else, nesting too deep for the parser included.
    """
    try:
        value = strictjson.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidTicketError(f"the ticket's {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidTicketError(f"the ticket's {what} is not a JSON object")
    return value
