"""`providers`: each session on the model provider its model names (docs/protocol.md), translated both ways.

The translation is `app.upstreams.providers` (pure); this module and those it uses only do the I/O:
`connection` (ProviderConnection, its receive) on `resumption`, `link` (Endpoint, frames) and
`silence`. One WebSocket per session, authenticated by a header (the key is never in the URL). The
start waits for the provider's acknowledgement within the upstream timeout. The session's pump reads
the provider itself (`receive`, no reader task): a provider message becomes its server events there,
and what one message leaves queued (the rest of its events, error events of ours) counts against the
session's memory budget. While the browser is slow the pump reads nothing, so the provider is slowed
(websockets' own receive queue holds one frame). A send that waits longer than the timeout for the
provider to read means the provider stopped reading: the session ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from app.config import Settings
from app.exceptions import UpstreamError
from app.session.models import ModelInfo
from app.session.upstream import SessionInfo
from app.upstreams.providers import translator_for
from app.upstreams.providers.connection import ProviderConnection
from app.upstreams.providers.link import SINCE_HANDLE_BYTES, Dropped, Endpoint, _close

RECEIVE_QUEUE_FRAMES = 1  # provider frames websockets buffers before it stops reading: `receive` drains it
MAX_PROVIDER_FRAME = 1 << 20  # bytes; an audio delta is a few KiB


def endpoints(settings: Settings) -> dict[str, Endpoint]:
    """The providers with a key in `settings`: only their models are served."""
    found = {}
    for provider, key, url in (
        ("openai", settings.openai_api_key, settings.openai_url),
        ("xai", settings.xai_api_key, settings.xai_url),
        ("gemini", settings.gemini_api_key, settings.gemini_url),
    ):
        if key:
            found[provider] = Endpoint(provider, url, key, model_in_query=provider != "gemini")
    return found


class ProvidersUpstream:
    """Connects each session to the provider of its model, among those configured."""

    def __init__(
        self,
        providers: Mapping[str, Endpoint],
        *,
        timeout: float,
        dropped: Dropped | None = None,
        response_timeout: float = 30.0,
        resumes: int = 10,
        resumed: Callable[[str], None] | None = None,
        memory_bytes: int = 8 << 20,
    ) -> None:
        self._endpoints = dict(providers)
        self._since_handle_bytes = min(SINCE_HANDLE_BYTES, memory_bytes // 4)
        self._timeout = timeout
        self._dropped: Dropped = dropped or (lambda provider, kind: None)
        self._response_timeout = response_timeout
        self._resumes = resumes
        self._resumed = resumed

    def serves(self, model: ModelInfo) -> bool:
        return model.provider in self._endpoints

    async def _open(self, endpoint: Endpoint, model: ModelInfo) -> ClientConnection:
        try:
            return await connect(
                endpoint.url_for(model),
                additional_headers=endpoint.headers(),
                open_timeout=None,  # the caller's deadline covers the handshake and the acknowledgement
                close_timeout=1,
                max_size=MAX_PROVIDER_FRAME,
                max_queue=RECEIVE_QUEUE_FRAMES,
                compression=None,
            )
        except InvalidStatus as exc:
            raise UpstreamError(
                f"{endpoint.provider} refused the connection (HTTP {exc.response.status_code})"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise UpstreamError(f"cannot reach {endpoint.provider} ({type(exc).__name__})") from None

    @asynccontextmanager
    async def connect(self, session: SessionInfo) -> AsyncIterator[ProviderConnection]:
        endpoint = self._endpoints.get(session.model.provider)
        if endpoint is None:
            raise UpstreamError(f"{session.model.provider} is not configured on this deployment")
        websocket: ClientConnection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                websocket = await self._open(endpoint, session.model)
                connection = ProviderConnection(
                    websocket,
                    translator_for(session),
                    endpoint,
                    timeout=self._timeout,
                    dropped=self._dropped,
                    reconnect=lambda: self._open(endpoint, session.model),
                    response_timeout=self._response_timeout,
                    resumes=self._resumes,
                    resumed=self._resumed,
                    session_id=session.session_id,
                    since_handle_bytes=self._since_handle_bytes,
                )
                await connection.start()
        except BaseException as exc:
            if websocket is not None:
                await _close(websocket)
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    f"{endpoint.provider} did not acknowledge the session within {self._timeout:g} s"
                ) from None
            raise
        try:
            yield connection
        finally:
            await connection.aclose()
