"""Small file helpers shared by the key set and the API key store: atomic writes, change stamps,
and a file's content reloaded when the file changes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, Literal, TypeVar

from app.exceptions import KeySetError

Stamp = tuple[int, int, int]
#: The change lock of a keys directory: signing keys, seal keys and the API key file (`locked`).
LOCK_FILE = ".lock"
LOCK_TIMEOUT_SECONDS = 30.0
T = TypeVar("T")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write a file so readers see the old or the new content, never a part: temp, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(directory: Path, *, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the keys directory's change lock (released when the process dies, too).

    Raises:
        KeySetError: another process held it for `timeout` seconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES):
            raise
        # A read-only keys directory (a mounted secret): no one changes it, so there is nothing to
        # serialise; `make keys` on a complete set still succeeds there, and a write fails loudly.
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KeySetError(
                        f"another command has been changing {directory} for {timeout:.0f}s "
                        f"(it holds {directory / LOCK_FILE}); try again when it has finished"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # drops the lock


def stamp(path: Path) -> Stamp | None:
    """What changes when a file is replaced (mtime, size, inode), or None when it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Reloading(Generic[T]):
    """What `load()` makes of a file, loaded again when the file changes; the last good value survives.

    `get()` looks at the file's stat at most every `interval` seconds, `check()` looks now; a reload
    happens only when the stat changed. When the file cannot be stat'ed or read, or `load` raises
    `KeySetError` (half-edited by hand, a huge number, deep nesting), the last good value stays in
    use and `log` gets one WARNING line per distinct problem: `<what>: <problem>; keeping the <n>
    keys loaded before`. A missing file is, by `missing`: read by `load` anyway (`"load"`), kept
    silently (`"keep"`), or a problem (`"report"`).
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[], T],
        *,
        initial: T,
        what: str,
        size: Callable[[T], int],
        log: logging.Logger,
        missing: Literal["load", "keep", "report"] = "load",
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.5,
        stat: Callable[[Path], Stamp | None] = stamp,
    ) -> None:
        self.path = path
        self.value = initial
        self._load = load
        self._what = what
        self._size = size
        self._log = log
        self._missing = missing
        self._clock = clock
        self._interval = interval
        self._stat = stat
        self._stamp: Stamp | None = None
        self._checked = float("-inf")
        self._problem: str | None = None

    def load_now(self) -> T:
        """Load at once (start-up); raises `KeySetError` when the file is missing, broken or unreadable."""
        try:
            current = self._stat(self.path)
            value = self._load()
        except OSError as exc:  # most are KeySetError already; a stat can fail too
            raise KeySetError(f"cannot read {self.path} ({exc.strerror or exc})") from None
        self.value, self._stamp, self._problem = value, current, None
        self._checked = self._clock()
        return value

    def check(self) -> T:
        """Look at the file now; reload when it changed since the last look."""
        self._checked = self._clock()
        try:
            current = self._stat(self.path)
        except OSError as exc:  # a symlink loop, a directory without search permission
            self._report(f"cannot read {self.path} ({exc.strerror or exc})")
            return self.value
        if current is None and self._missing != "load":
            if self._missing == "report":
                self._report(f"{self.path} is missing")
            return self.value
        if current == self._stamp:
            return self.value
        try:
            self.load_now()
        except KeySetError as exc:
            self._stamp = current  # that version is not read again; the next change is
            self._report(exc.message)
        return self.value

    def get(self) -> T:
        """The value, looking at the file first when `interval` has passed since the last look."""
        elapsed = self._clock() - self._checked
        if elapsed >= self._interval or elapsed < 0:  # < 0: the clock stepped back
            return self.check()
        return self.value

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            count = self._size(self.value)
            self._log.warning("%s: %s; keeping the %d keys loaded before", self._what, problem, count)
