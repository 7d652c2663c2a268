"""Small file helpers shared by the key set and the API key store: atomic writes, change stamps."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

Stamp = tuple[int, int, int]


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


def stamp(path: Path) -> Stamp | None:
    """What changes when a file is replaced (mtime, size, inode), or None when it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
