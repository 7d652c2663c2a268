"""Where a process gets its key set: the `KeySource` protocol, and a keys directory reloaded on change.

A verify-only edge uses `app.jwks.JwksKeySource` instead, which implements the same protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.exceptions import KeySetError
from app.files import Stamp, stamp
from app.keys import MANIFEST, KeySet
from app.sealkeys import SealKeySet

logger = logging.getLogger(__name__)


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
        self._clock = clock
        self._interval = check_interval
        self._keys = KeySet.empty()
        self._stamp: Stamp | None = None
        self._checked = float("-inf")
        self._problem: str | None = None
        self.reloads = 0

    def _stat(self) -> Stamp | None:
        return stamp(self.directory / MANIFEST)

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            logger.warning("keys: %s; keeping the %d keys loaded before", problem, len(self._keys.keys))

    def load(self) -> KeySet:
        """Load now (start-up); raises KeySetError when the set is missing, broken or unreadable."""
        try:
            current = self._stat()
            keys = KeySet.load(self.directory)
        except OSError as exc:  # KeySet.load turns most into KeySetError; a stat can fail too
            raise KeySetError(f"cannot read {self.directory / MANIFEST} ({exc.strerror or exc})") from None
        self._keys = keys
        self._stamp = current
        self._checked = self._clock()
        self.reloads += 1
        return self._keys

    def _reload_if_changed(self) -> None:
        self._checked = self._clock()
        try:
            current = self._stat()
        except OSError as exc:  # a symlink loop, a directory without search permission
            self._report(f"cannot read {self.directory / MANIFEST} ({exc.strerror or exc})")
            return
        if current is None:
            self._report(f"{self.directory / MANIFEST} is missing")
            return
        if current == self._stamp:
            return
        try:
            self.load()
        except KeySetError as exc:
            # Half-edited by hand, or not a readable file: keep serving with the last good set.
            self._stamp = current
            self._report(exc.message)
        else:
            self._problem = None

    def current(self) -> KeySet:
        elapsed = self._clock() - self._checked
        if elapsed >= self._interval or elapsed < 0:  # < 0: the wall clock stepped back
            self._reload_if_changed()
        return self._keys

    async def refresh(self) -> KeySet:
        """Look for a newer set now (unknown kid)."""
        self._reload_if_changed()
        return self._keys

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
        self._clock = clock
        self._interval = check_interval
        self._keys = SealKeySet.empty()
        self._stamp: Stamp | None = None
        self._checked = float("-inf")
        self._problem: str | None = None
        self.reloads = 0

    def load(self) -> SealKeySet:
        """Load now (start-up); a missing file gives an empty set, a broken one raises KeySetError."""
        try:
            current = stamp(self.path)
            keys = SealKeySet.load(self.path) if current is not None else SealKeySet.empty()
        except OSError as exc:
            raise KeySetError(f"cannot read {self.path} ({exc.strerror or exc})") from None
        self._keys = keys
        self._stamp = current
        self._checked = self._clock()
        self.reloads += 1
        return self._keys

    def _reload_if_changed(self) -> None:
        self._checked = self._clock()
        try:
            current = stamp(self.path)
        except OSError as exc:  # a symlink loop, a directory without search permission
            self._report(f"cannot read {self.path} ({exc.strerror or exc})")
            return
        if current is None or current == self._stamp:  # gone: keep the last set (writes rename)
            return
        try:
            self.load()
        except KeySetError as exc:
            self._stamp = current  # half-edited by hand, or not a readable file: keep the last set
            self._report(exc.message)
        else:
            self._problem = None

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            logger.warning("seal keys: %s; keeping the %d keys loaded before", problem, len(self._keys.keys))

    def current(self) -> SealKeySet:
        elapsed = self._clock() - self._checked
        if elapsed >= self._interval or elapsed < 0:
            self._reload_if_changed()
        return self._keys

    async def refresh(self) -> SealKeySet:
        """Look for a newer set now (unknown seal kid): a stat; a reload only if the file changed."""
        self._reload_if_changed()
        return self._keys
