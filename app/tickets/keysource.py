"""Where a process gets its key set: the `KeySource` protocol, and a keys directory reloaded on change.

A verify-only edge uses `app.tickets.jwks.JwksKeySource` instead, which implements the same protocol. The
reloading itself (stat, reload on change, keep the last good set, one WARNING per problem) is
`app.tickets.keyfiles.Reloading`, which the API key store uses too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app import redaction
from app.tickets.base64url import b64url
from app.tickets.keyfiles import Reloading, Stamp, stamp
from app.tickets.keys import MANIFEST, KeySet
from app.tickets.sealkeys import SealKeySet

logger = logging.getLogger(__name__)


def _stat(path: Path) -> Stamp | None:
    return stamp(path)  # looked up at each call, so tests can make it fail


class KeySource(Protocol):
    """Where a process gets its key set: a keys directory, or a minter's JWKS URL."""

    def current(self) -> KeySet:
        """The set to use now (cheap; may look for changes now and then)."""
        ...

    async def refresh(self) -> KeySet:
        """Look for a newer set now, rate-limited: called on an unknown kid."""
        ...

    async def aclose(self) -> None: ...


class DirectoryKeySource:
    """The key set of a keys directory, reloaded when `jwks.json` changes.

    `current()` looks at the manifest's stat at most every `check_interval` seconds, so a
    `make rotate` reaches a running server within that time, and `refresh()` (on an unknown kid)
    looks at once: a stat costs microseconds, and a reload happens only when the file changed.
    A manifest that cannot be read (missing, broken, a symlink loop, no permission) keeps the last
    good set, with one WARNING line per distinct problem.
    """

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 0.5,
    ) -> None:
        self.directory = directory
        self._manifest = Reloading(
            directory / MANIFEST,
            lambda: KeySet.load(directory),
            initial=KeySet.empty(),
            what="keys",
            size=lambda keys: len(keys.keys),
            log=logger,
            missing="report",
            clock=clock,
            interval=check_interval,
            stat=_stat,
        )

    def load(self) -> KeySet:
        """Load now (start-up); raises KeySetError when the set is missing, broken or unreadable."""
        return self._manifest.load_now()

    def current(self) -> KeySet:
        return self._manifest.get()

    async def refresh(self) -> KeySet:
        """Look for a newer set now (unknown kid)."""
        return self._manifest.check()

    async def aclose(self) -> None:
        return None


class SealKeySource:
    """The seal keys of a file (`seal.json`), reloaded when it changes; every node has one.

    Like `DirectoryKeySource`: `current()` looks at the file's stat at most every `check_interval`
    seconds, `refresh()` (on an unknown seal kid) looks at once. A missing file is an empty set at
    start-up (this node then neither seals nor opens sealed tickets); later, a file that is gone, does
    not parse or cannot be read keeps the last good set, with one WARNING line per distinct problem.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 0.5,
    ) -> None:
        self.path = path
        self._file = Reloading(
            path,
            lambda: _redacted(SealKeySet.load(path)),
            initial=SealKeySet.empty(),
            what="seal keys",
            size=lambda keys: len(keys.keys),
            log=logger,
            missing="keep",  # gone: keep the last set (writes rename)
            clock=clock,
            interval=check_interval,
            stat=_stat,
        )

    def load(self) -> SealKeySet:
        """Load now (start-up); a missing file gives an empty set, a broken one raises KeySetError."""
        if not self.path.exists():
            return self._file.check()  # nothing to read yet: the empty set, until the file appears
        return self._file.load_now()

    def current(self) -> SealKeySet:
        return self._file.get()

    async def refresh(self) -> SealKeySet:
        """Look for a newer set now (unknown seal kid): a stat; a reload only if the file changed."""
        return self._file.check()


def _redacted(keys: SealKeySet) -> SealKeySet:
    """`keys`, whose secrets (as `seal.json` writes them) are now cut out of log lines and events."""
    redaction.set_secrets("seal", [b64url(key.secret) for key in keys.keys])
    return keys
