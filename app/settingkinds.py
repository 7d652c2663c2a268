"""The kinds of value a setting takes: how each is read from its variable, and how a value is checked.

`app.config.Settings` names a kind per field; calling a kind parses a variable's text (then checks
it), and `Settings.__post_init__` runs its `check` on every value, however Settings was built.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Kind:
    """A kind of setting: `convert` reads a variable's text, `check` vets a value however it was made.

    Calling it parses a variable (convert, then check); `Settings.__post_init__` runs `check` alone
    on every field, so `Settings(...)` built in code is held to the same bounds. Either raises
    ValueError saying what is wrong.
    """

    convert: Callable[[str], Any]
    check: Callable[[Any], None]

    def __call__(self, raw: str) -> Any:
        value = self.convert(raw)
        self.check(value)
        return value


def optional(kind: Kind) -> Kind:
    """`kind`, or None from an empty variable (and None accepted as a value)."""

    def check(value: Any) -> None:
        if value is not None:
            kind.check(value)

    return Kind(lambda raw: kind.convert(raw) if raw.strip() else None, check)


def _to_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _is_bool(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")


boolean = Kind(_to_bool, _is_bool)


def _to_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def integer(minimum: int, maximum: int | None = None) -> Kind:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")

    return Kind(_to_int, check)


def _to_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


def number(minimum: float) -> Kind:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"must be a finite number of at least {minimum}, got {value!r}")

    return Kind(_to_float, check)


def _is_text(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must not be empty")


text = Kind(str.strip, _is_text)
optional_text = optional(text)


def _is_path(value: Any) -> None:
    if not isinstance(value, Path):
        raise ValueError(f"expected a path, got {value!r}")


def _to_path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must not be empty")
    return Path(raw.strip())


path = Kind(_to_path, _is_path)
optional_path = optional(path)


def required_url(*schemes: str) -> Kind:
    def check(value: Any) -> None:
        if isinstance(value, str) and not value:
            raise ValueError("must not be empty")
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"expected a {' or '.join(schemes)} URL with a host, got {value!r}")

    return Kind(str.strip, check)


def url(*schemes: str) -> Kind:
    return optional(required_url(*schemes))


def _is_replay_url(value: Any) -> None:
    if value == "memory://":
        return
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        raise ValueError(f"expected memory:// or redis://host:port/db, got {value!r}")


replay_url = Kind(str.strip, _is_replay_url)


def choice(*choices: str) -> Kind:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")

    return Kind(lambda raw: raw.strip().lower(), check)


def _items(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _are_texts(value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"expected a tuple of non-empty strings, got {value!r}")


origins = Kind(lambda raw: tuple(origin.rstrip("/") for origin in _items(raw)), _are_texts)


def _are_networks(value: Any) -> None:
    """Addresses or CIDRs (or `*` for any)."""
    _are_texts(value)
    for item in value:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"expected addresses or CIDRs separated by commas, got {item!r}") from None


proxies = Kind(_items, _are_networks)
optional_port = optional(integer(1, 65535))


def _are_hosts(value: Any) -> None:
    _are_texts(value)
    for item in value:
        if not re.fullmatch(r"[a-z0-9_.\-]+|\[[0-9a-f:.]+\]", item):
            raise ValueError(f"expected host names or [IPv6] literals without ports, got {item!r}")


#: Comma-separated host names or IP literals (`[::1]` for IPv6), without ports, lower-cased.
hosts = Kind(lambda raw: tuple(item.lower() for item in _items(raw)), _are_hosts)
