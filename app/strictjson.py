"""Strict JSON reading (RFC 8259): every member name once per object, finite numbers only.

The one reader for what outside parties send as JSON: mint bodies, a ticket's parts, client events.
Python's `json` accepts `NaN`, `Infinity`, numbers beyond a double (as infinity) and a member name
twice (the last wins); parsers disagree on the last, so a proxy or a backend that read another
value would check something else than what is used (RFC 8259, section 4). Refused here.
"""

from __future__ import annotations

import json
import math
from typing import Any


class DuplicateMemberError(ValueError):
    """A member name appears twice in one object; `member` names it."""

    def __init__(self, member: str) -> None:
        super().__init__(f"duplicate member name {member!r}")
        self.member = member


class NotANumberError(ValueError):
    """A literal JSON has no room for: `NaN`, `Infinity`, or a number beyond a double."""

    def __init__(self, literal: str) -> None:
        super().__init__(literal if len(literal) <= 32 else literal[:32] + "...")
        self.literal = literal


def _reject_constant(name: str) -> Any:
    raise NotANumberError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # `1e400`: Infinity in disguise
        raise NotANumberError(text)
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateMemberError(name)
            seen.add(name)
    return members


# Built once: `json.loads` with options builds a new decoder on every call. Integers longer than
# Python's limit (4300 digits) raise ValueError in the decoder itself.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_members
)
_LAST_WINS = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(text: str, *, unique_names: bool = True) -> Any:
    """The JSON value in `text`, read strictly.

    Args:
        unique_names: refuse a member name twice in one object. Client events pass False: their
            short path (orjson, `app.session.events.forwarded`) keeps the last, and both paths must agree.

    Raises:
        DuplicateMemberError: a member name twice in one object, with `unique_names` (a ValueError).
        NotANumberError: `NaN`, `Infinity` or a number beyond a double (a ValueError).
        ValueError: not JSON.
        RecursionError: nested deeper than the parser can follow.
    """
    return (_DECODER if unique_names else _LAST_WINS).decode(text)
