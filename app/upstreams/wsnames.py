"""The websockets names the provider link uses outside websockets' documented API: range and check.

websockets' asyncio `ClientConnection` documents its methods and a few properties; the provider link
also reads three attributes it sets on every connection, without an underscore but undocumented:
`transport` (the write buffer's size and limits), `paused` (whether writing is paused) and
`protocol` (the sans-I/O connection, through which a frame that cannot wait is written at once:
docs/decisions.md, "Idle session memory and the audio path"). pyproject.toml pins websockets to
`SUPPORTED`; `python -m app.serve` calls `check()` before it serves and refuses another release, or
a connection object without one of these names.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version as installed_version

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from app.exceptions import SettingsError

#: The websockets releases the provider link supports; the same range as in pyproject.toml.
SUPPORTED = ">=17,<18"
_LOWEST, _BELOW = 17, 18
#: Attributes of a connected `ClientConnection` the provider link reads.
ATTRIBUTES: tuple[str, ...] = ("transport", "paused", "protocol")


class _Transport(asyncio.Transport):
    """A transport that is never written to: the check only connects a connection object to it."""

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None


async def _connected() -> ClientConnection:
    connection = ClientConnection(ClientProtocol(parse_uri("ws://127.0.0.1/")))
    connection.connection_made(_Transport())
    return connection


def problems(release: str | None = None) -> list[str]:
    """What does not match: a release outside `SUPPORTED`, or a name the link reads that is missing."""
    release = release or installed_version("websockets")
    found = []
    if not _LOWEST <= int(release.split(".")[0]) < _BELOW:
        found.append(f"websockets {release} is installed; the provider link supports websockets{SUPPORTED}")
    connection = asyncio.run(_connected())
    found += [f"ClientConnection.{name} is gone" for name in ATTRIBUTES if not hasattr(connection, name)]
    return found


def check() -> None:
    """Raise `SettingsError` naming the supported range unless the installed websockets fits."""
    found = problems()
    if found:
        raise SettingsError(
            "websockets",
            "; ".join(found)
            + f". Install the locked websockets{SUPPORTED} (`make run` does, from requirements-dev.lock).",
        )
