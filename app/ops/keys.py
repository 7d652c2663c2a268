"""`python -m app.keys {init,rotate,retire [--force],status,jwks}`: the keys directory's commands.

`make keys`, `make rotate`, `make retire`, `make key-status` and `make jwks` call this. Seal keys
(`seal.json`, see `app.tickets.sealkeys`) share these commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from app.config import Settings
from app.exceptions import KeySetError, SettingsError
from app.tickets.keyfiles import locked
from app.tickets.keys import STATES, KeySet
from app.tickets.rotation import ensure_keys, publish_wait, retire, retire_after, rotate
from app.tickets.sealkeys import SEAL_FILE, SealKeySet, retire_seal_keys


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def main(argv: Sequence[str] | None = None, *, now: Callable[[], float] = time.time) -> int:
    """`python -m app.keys {init,rotate,retire [--force],status,jwks}`."""
    parser = argparse.ArgumentParser(prog="python -m app.keys", description=__doc__)
    parser.add_argument("command", choices=["init", "rotate", "retire", "status", "jwks"])
    parser.add_argument(
        "--force",
        action="store_true",
        help="retire: delete every retiring key; rotate: promote the next key however recently "
        "it was published",
    )
    parser.add_argument("--dir", type=Path, help="keys directory (default: REALTIME_KEYS_DIR)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
        directory: Path = args.dir or settings.keys_dir
        stamp = int(now())
        if args.command == "init":
            keyset, changed = ensure_keys(directory, now=stamp)
            verb = "created" if changed else "already present"
            print(f"keys {verb} in {directory}")
            _print_status(keyset, stamp, directory)
        elif args.command == "rotate":
            wait = publish_wait(
                configured=settings.key_publish_seconds,
                refresh_interval=settings.jwks_refresh_interval_seconds,
                fetch_timeout=settings.jwks_timeout_seconds,
            )
            keyset = rotate(directory, now=stamp, min_published=0 if args.force else wait)
            signer = keyset.in_state("active")[0]
            print(f"rotated: {signer.kid} signs now; running servers pick it up without a restart")
            _print_status(keyset, stamp, directory)
        elif args.command == "retire":
            wait = retire_after(leeway=settings.leeway_seconds, grace=settings.retire_grace_seconds)
            gone = retire(directory, now=stamp, min_age=wait, force=args.force)
            for key in gone:
                print(f"retired {key.kid}")
            left = KeySet.load(directory).in_state("retiring")
            for key in left:
                print(f"kept {key.kid}: retiring for {_age(stamp - key.state_since)}, needs {wait}s")
            with locked(directory):  # retire() above released it; seal.json changes under it too
                sealed_gone, sealed_left = _retire_seal_keys(directory, stamp, wait, force=args.force)
            if not gone and not left and not sealed_gone and not sealed_left:
                print("no retiring keys")
        elif args.command == "status":
            _print_status(KeySet.load(directory), stamp, directory)
        else:
            print(json.dumps(KeySet.load(directory).jwks(), indent=2))
    except (KeySetError, SettingsError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # the keys directory cannot be written (read-only, full, permissions)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(keyset: KeySet, now: int, directory: Path) -> None:
    for state in STATES:
        for key in keyset.in_state(state):
            print(
                f"{state:<9} {key.kid}  created {_age(now - key.created_at)} ago, "
                f"{state} for {_age(now - key.state_since)}"
            )
    _print_seal_status(directory, now)


# Seal keys (`seal.json`, see app.tickets.sealkeys) share the commands above; their secrets are never printed.


def _print_seal_status(directory: Path, now: int) -> None:
    path = directory / SEAL_FILE
    if not path.exists():
        print(f"no seal keys ({path}): sealed tickets cannot be issued; run `make keys`")
        return
    seal_keys = SealKeySet.load(path)
    for state in STATES:
        for key in seal_keys.in_state(state):
            print(
                f"{state:<9} {key.kid}  seal key, created {_age(now - key.created_at)} ago, "
                f"{state} for {_age(now - key.state_since)}"
            )


def _retire_seal_keys(directory: Path, now: int, wait: int, *, force: bool) -> tuple[list[str], list[str]]:
    path = directory / SEAL_FILE
    gone = [key.kid for key in retire_seal_keys(path, now=now, min_age=wait, force=force)]
    for kid in gone:
        print(f"retired seal key {kid}")
    left = SealKeySet.load(path).in_state("retiring") if path.exists() else []
    for key in left:
        print(f"kept seal key {key.kid}: retiring for {_age(now - key.state_since)}, needs {wait}s")
    return gone, [key.kid for key in left]


if __name__ == "__main__":
    sys.exit(main())
