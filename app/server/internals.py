"""The uvicorn internals the edge's protocol classes build on: the supported range and a start-up check.

uvicorn takes protocol classes as options (`http=`, `ws=`), but what a subclass may override or read
is not a documented API, so `app.server.connections` and `app.server.frames` depend on the names listed here.
pyproject.toml pins uvicorn to `SUPPORTED`, the series the suite ran on; `python -m app.serve` calls
`check()` before it serves and refuses another version, or one whose classes lost a name we use
(docs/decisions.md, "uvicorn internals").
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version as installed_version

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from app.exceptions import SettingsError

_Class = type[HttpToolsProtocol] | type[WebSocketsSansIOProtocol]

#: The uvicorn releases the edge supports; the same range as in pyproject.toml.
SUPPORTED = ">=0.55,<0.56"
_LOWEST, _BELOW = (0, 55), (0, 56)

#: Methods the edge's classes override or call, by uvicorn class.
METHODS: dict[_Class, tuple[str, ...]] = {
    HttpToolsProtocol: (
        "connection_made",
        "connection_lost",
        "data_received",
        "send_400_response",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "handle_websocket_upgrade",
    ),
    WebSocketsSansIOProtocol: (
        "data_received",
        "handle_connect",
        "handle_text",
        "handle_bytes",
        "handle_cont",
        "handle_ping",
        "handle_parser_exception",
        "send_receive_event_to_app",
        "on_task_complete",
        "pause_writing",
        "resume_writing",
        "shutdown",
        "receive",
        "send",
    ),
}
#: Attributes a new protocol object has that the edge's classes read or set.
ATTRIBUTES: dict[_Class, tuple[str, ...]] = {
    HttpToolsProtocol: ("config", "connections", "loop", "cycle", "timeout_keep_alive_task", "app"),
    WebSocketsSansIOProtocol: (
        "config",
        "connections",
        "loop",
        "conn",
        "queue",
        "frames",
        "curr_msg_data_type",
        "read_paused",
        "handshake_initiated",
        "handshake_complete",
        "close_sent",
        "writable",
        "disconnected",
        "initial_response",
        "transport",
    ),
}


def _release(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def problems(release: str | None = None) -> list[str]:
    """What does not match: a release outside `SUPPORTED`, or a name the edge uses that is missing."""
    release = release or installed_version("uvicorn")
    found = []
    if not _LOWEST <= _release(release) < _BELOW:
        found.append(f"uvicorn {release} is installed; the edge supports uvicorn{SUPPORTED}")
    for cls, names in METHODS.items():
        found += [
            f"{cls.__name__}.{name}() is gone" for name in names if not callable(getattr(cls, name, None))
        ]
    made = asyncio.run(_made())
    for cls, names in ATTRIBUTES.items():
        found += [f"{cls.__name__}.{name} is gone" for name in names if not hasattr(made[cls], name)]
    return found


def check() -> None:
    """Raise `SettingsError` naming the supported range unless the installed uvicorn fits the edge."""
    found = problems()
    if found:
        raise SettingsError(
            "uvicorn",
            "; ".join(found)
            + f". Install the locked uvicorn{SUPPORTED} (`make run` does, from requirements-dev.lock).",
        )


async def _made() -> dict[_Class, asyncio.Protocol]:
    """A new object of each class, as uvicorn builds one per connection (inside its running loop)."""
    config = uvicorn.Config(_never_called, log_config=None)
    return {cls: cls(config=config, server_state=ServerState(), app_state={}) for cls in ATTRIBUTES}


async def _never_called(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    raise AssertionError("the check builds protocol objects, it never serves")
