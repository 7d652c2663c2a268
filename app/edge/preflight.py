"""What a process refuses to start with: secret key files open to others, single use per process unasked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from app.config import PREFIX, Settings
from app.exceptions import KeySetError, SettingsError
from app.tickets.keys import KeySet

PER_PROCESS_WARNING = (
    "REALTIME_REPLAY_URL=memory:// on a process that verifies tickets minted elsewhere: single use "
    "holds per process only (a ticket used here can be used again on any other process); "
    "set REALTIME_REPLAY_URL=redis://host:port/db to share one store"
)


def check_single_use(settings: Settings, keys: KeySet) -> bool:
    """Whether single use holds per process only, as asked (the caller logs it once).

    A process that verifies tickets it did not mint (a JWKS edge, or a keys directory without an
    active private key) on the default `memory://` store would let each ticket be used once here
    and once more wherever else it is accepted: that must be asked for by name.

    Raises:
        SettingsError: it would be so, and REALTIME_REPLAY_URL was not set.
    """
    if settings.replay_url != "memory://" or (settings.jwks_url is None and keys.signer is not None):
        return False
    if settings.replay_url_defaulted:
        raise SettingsError(
            PREFIX + "REPLAY_URL",
            "this process verifies tickets it did not mint (REALTIME_JWKS_URL, or a keys directory "
            "without an active private key), and the default memory:// store would let each ticket "
            "be used once here and again on every other process. Set REALTIME_REPLAY_URL="
            "redis://host:port/db (shared by every edge and minter), or REALTIME_REPLAY_URL=memory:// "
            "to accept single use per process only",
        )
    return True


def secret_files(settings: Settings) -> list[Path]:
    """The files that hold secrets this process reads: private signing keys and the seal keys."""
    found = sorted(settings.keys_dir.glob("*.pem")) if settings.keys_dir.is_dir() else []
    if settings.seal_keys_path.is_file():
        found.append(settings.seal_keys_path)
    return found


def check_secret_modes(settings: Settings) -> None:
    """Refuse private key files and `seal.json` that others, or needlessly the group, may read.

    Group access is refused on a file this process owns (it reads it as its owner; `chmod 600`
    fixes it). A file owned by someone else can only be read through its group: a Kubernetes
    secret volume, owned by root with the pod's `fsGroup` and mode 0440, is such a file.

    Raises:
        KeySetError: naming the first such file and the `chmod 600` that fixes it.
    """
    for path in secret_files(settings):
        try:
            status = path.stat()
        except OSError:
            continue  # gone meanwhile: reading it reports what is wrong
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o007 or (mode & 0o070 and status.st_uid == os.geteuid()):
            raise KeySetError(
                f"{path} holds a secret key and is open to group or others (mode {mode:04o}): "
                f"run `chmod 600 {path}`"
            )


def preflight(settings: Settings) -> None:
    """What `Services.open` would refuse, checked before a server starts (no network).

    Raises:
        KeySetError: the keys directory cannot be loaded, or a secret key file is open to others.
        SettingsError: single use would silently hold per process only.
    """
    keys = KeySet.empty() if settings.jwks_url else KeySet.load(settings.keys_dir)
    check_secret_modes(settings)
    check_single_use(settings, keys)
