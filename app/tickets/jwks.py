"""A verify-only edge's key set: the minter's public JWKS, cached, polled, refetched on an unknown kid.

The edge keeps serving with the last good set when the minter cannot be reached or answers something
unusable. Each fetch has a total timeout and a connection of its own (one kept alive may be closed by
the minter just as a fetch is sent on it), and the body is capped at `MAX_JWKS_BYTES` of decompressed
bytes as it streams (a small gzip body can inflate to gigabytes).

Polls come every `poll_interval`. An unknown kid asks for a fetch that starts after it arrived (a
fetch already in flight may have been answered before the key existed): callers arriving together
share one fetch, and fetches on unknown kids start at most once per `refetch_interval`, a caller
waiting for the rest of it rather than being refused. So a ticket signed by a key the minter
promoted a moment ago still verifies, and a flood of made-up kids costs the minter one fetch per
interval per edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm
from jwt.exceptions import InvalidKeyError

from app.exceptions import KeySetError
from app.tickets.keys import KeySet, SigningKey

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20
REFETCH_SECONDS = 1.0
#: zlib's window bits for "a gzip or a zlib header, whichever it is" (HTTP `deflate` is zlib).
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS


class JwksKeySource:
    """Keys from `url`; `current()` is the cached set, `refresh()` fetches (unknown kid)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        poll_interval: float,
        refetch_interval: float = REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll: bool = True,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._sleep = sleep  # the wait for the refetch interval (polls sleep on the event loop)
        self._poll = poll
        self._keys = KeySet.empty()
        self._started = 0  # fetches started so far
        self._last_start = float("-inf")
        self._skipped: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        # A connection per fetch: a minter closes an idle kept-alive connection after its keep-alive
        # timeout (uvicorn's 5 s is the poll interval), and a fetch sent on it as it closes would fail.
        self._client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._poller: asyncio.Task[None] | None = None
        self.failures = 0
        self.fetches = 0

    def current(self) -> KeySet:
        return self._keys

    async def start(self) -> None:
        """Fetch once (an unreachable minter is logged; `/readyz` says so until keys arrive) and poll."""
        async with self._lock:
            await self._fetch()
        if self._poll and self._poll_interval > 0:
            self._poller = asyncio.create_task(self._poll_forever())
            self._poller.add_done_callback(self._poller_ended)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            async with self._lock:
                await self._fetch()  # failures are handled there: the cached set is kept

    def _poller_ended(self, task: asyncio.Task[None]) -> None:
        """Only a bug ends the poller early: say so loudly, since keys then change only on unknown kids."""
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "JWKS poller of %s stopped; keys refresh only on unknown kids now",
                self.url,
                exc_info=task.exception(),
            )

    async def refresh(self) -> KeySet:
        """The set from a fetch that started after this call (rate-limited; see the module docstring)."""
        asked = self._started
        async with self._lock:
            if self._started > asked:
                return self._keys  # a fetch started while this caller waited: it is recent enough
            wait = self._last_start + self._refetch_interval - self._clock()
            if wait > 0:
                await self._sleep(min(wait, self._refetch_interval))
            await self._fetch()
        return self._keys

    async def _fetch(self) -> None:
        """Fetch and parse the document now (the caller holds the lock); keep the set on failure."""
        self._started += 1
        self._last_start = self._clock()
        self.fetches += 1
        try:
            # httpx's timeout bounds each read, not the whole fetch: a server that drips
            # bytes would hold every verifier waiting on this lock; bound the total too.
            async with asyncio.timeout(self._timeout):
                document = json.loads(await self._download())
            keys, skipped = parse_jwks(document)
            if not keys.keys:
                raise KeySetError("JWKS: the document holds no usable Ed25519 signing keys")
        except (httpx.HTTPError, TimeoutError, ValueError, KeySetError) as exc:
            self.failures += 1
            logger.warning(
                "JWKS fetch from %s failed (%s); keeping %d cached keys",
                self.url,
                _reason(exc),
                len(self._keys.keys),
            )
            return
        self._keys = keys
        if frozenset(skipped) != self._skipped:  # say it once, not at every poll
            self._skipped = frozenset(skipped)
            for why in skipped:
                logger.warning("JWKS from %s: skipped %s", self.url, why)

    async def _download(self) -> bytes:
        """The body, decompressed by us as it streams so the cap holds for what it inflates to."""
        headers = {"Accept-Encoding": "gzip, deflate"}
        async with self._client.stream("GET", self.url, headers=headers) as response:
            response.raise_for_status()
            inflater = _inflater(response.headers.get("content-encoding", ""))
            body = bytearray()
            async for chunk in response.aiter_raw():
                data = chunk
                while data:
                    out = inflater.decompress(data, MAX_JWKS_BYTES + 1 - len(body)) if inflater else data
                    body += out
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"JWKS document larger than {MAX_JWKS_BYTES} bytes")
                    tail = inflater.unconsumed_tail if inflater else b""
                    if tail == data and not out:
                        break  # no progress (cannot happen with zlib, but never spin)
                    data = tail
            if inflater is not None:
                body += inflater.flush()
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS document larger than {MAX_JWKS_BYTES} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._client.aclose()


def _inflater(encoding: str) -> zlib._Decompress | None:
    """A decompressor for the response's Content-Encoding (None: identity); others are refused."""
    value = encoding.strip().lower()
    if value in ("", "identity"):
        return None
    if value in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(_GZIP_OR_ZLIB)
    raise ValueError(f"unsupported Content-Encoding {value[:40]!r}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValueError | KeySetError):
        text = exc.message if isinstance(exc, KeySetError) else str(exc)
        return f"{type(exc).__name__}: {text[:200]}"
    return type(exc).__name__


def parse_jwks(document: object) -> tuple[KeySet, list[str]]:
    """The Ed25519 signing keys of a JWKS document, and a line for each key skipped.

    Taken: `kty` OKP, `crv` Ed25519, `alg` EdDSA or absent, `use` sig or absent, a string `kid` and a
    valid `x`. Anything else is skipped (a JWKS may carry keys for other uses or algorithms).

    Raises:
        KeySetError: not an object with a `keys` list, or a kid named twice.
    """
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeySetError("JWKS: expected an object with a `keys` list")
    keys: list[SigningKey] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            skipped.append(f"key #{index}: not an object")
            continue
        kid, x = entry.get("kid"), entry.get("x")
        name = f"key {kid!r}" if isinstance(kid, str) else f"key #{index}"
        problem = _unusable(entry)
        if problem is None and (not isinstance(kid, str) or not kid or not isinstance(x, str)):
            problem = "needs a string `kid` and `x`"
        public = _public_key(x) if problem is None and isinstance(x, str) else None
        if problem is None and public is None:
            problem = "`x` is not an Ed25519 public key"
        if problem is None and isinstance(kid, str) and isinstance(x, str) and public is not None:
            keys.append(SigningKey(kid, "active", public, x, 0, 0))
        else:
            skipped.append(f"{name[:80]}: {problem}")
    return KeySet(keys=tuple(keys)), skipped


def _public_key(x: str) -> Ed25519PublicKey | None:
    """PyJWT reads the JWK (its `x` member, base64url); anything else than an Ed25519 public key is None."""
    try:
        key = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": "Ed25519", "x": x})
    except (InvalidKeyError, ValueError):
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


def _unusable(entry: dict[str, object]) -> str | None:
    for member, allowed in (("kty", ("OKP",)), ("crv", ("Ed25519",))):
        if entry.get(member) not in allowed:
            return f"`{member}` is {str(entry.get(member))[:20]!r}, not {allowed[0]}"
    for member, wanted in (("alg", "EdDSA"), ("use", "sig")):
        if member in entry and entry[member] != wanted:
            return f"`{member}` is {str(entry[member])[:20]!r}, not {wanted}"
    return None
