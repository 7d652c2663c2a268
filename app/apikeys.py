"""API keys: hashed at rest, checked in constant time, reloaded on change; `python -m app.apikeys`.

The file (`keys/api_keys.json` by default) holds one entry per key: an id, the SHA-256 of the key,
the project and the kind. Keys are 256 random bits, so a fast hash is enough: there is nothing to
brute-force, unlike a password. The plain key is printed once, when it is made, and never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.exceptions import InvalidCredentialsError, KeySetError, MissingCredentialsError
from app.files import Stamp, atomic_write, stamp

Kind = Literal["runtime", "management"]
RUNTIME_PREFIX = "oprk-"
MANAGEMENT_PREFIX = "opmak-"


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without the secret."""

    id: str
    digest: str
    project: str | None
    kind: Kind
    created_at: int
    label: str | None = None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).

    Raises:
        MissingCredentialsError: no header, another scheme, or an empty token.
    """
    if not authorization:
        raise MissingCredentialsError("send `Authorization: Bearer <runtime API key>`")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingCredentialsError("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise MissingCredentialsError("the Bearer token is empty")
    return token


class ApiKeyStore:
    """The hashed keys of one file, reloaded when the file changes (checked at most every 0.5 s)."""

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
        self._by_digest: dict[str, ApiKey] = {}
        self._stamp: Stamp | None = None
        self._checked = float("-inf")

    def _reload(self) -> None:
        self._checked = self._clock()
        current = stamp(self.path)
        if current == self._stamp:
            return
        keys = read_keys(self.path) if current is not None else []
        self._by_digest = {key.digest: key for key in keys}
        self._stamp = current

    def load(self) -> ApiKeyStore:
        """Read the file now (start-up); a missing file means no keys yet."""
        self._stamp = None
        self._reload()
        return self

    def check(self, token: str) -> ApiKey:
        """The runtime key for `token`, with its project.

        Raises:
            InvalidCredentialsError: unknown key, a management key, or a key with no project.
        """
        elapsed = self._clock() - self._checked
        if elapsed >= self._interval or elapsed < 0:  # < 0: the wall clock stepped back
            try:
                self._reload()
            except KeySetError:
                self._checked = self._clock()  # keep the last good keys while the file is broken
        computed = digest(token)
        found = self._by_digest.get(computed)
        if found is None:
            # A key made a moment ago works at once: one stat() on a miss, a reload only if it changed.
            with contextlib.suppress(KeySetError):
                self._reload()
            found = self._by_digest.get(computed)
        # The dict finds the candidate by digest; compare_digest makes the final match constant-time.
        if found is None or not hmac.compare_digest(found.digest, computed):
            if token.startswith(MANAGEMENT_PREFIX):
                raise InvalidCredentialsError(
                    "management keys (opmak-) cannot mint or open sessions: use a runtime key"
                )
            raise InvalidCredentialsError("the API key is not valid")
        if found.kind == "management" or token.startswith(MANAGEMENT_PREFIX):
            raise InvalidCredentialsError(
                "management keys (opmak-) cannot mint or open sessions: use a runtime key"
            )
        if not found.project:
            raise InvalidCredentialsError(
                "the API key belongs to no project: use a project-scoped runtime key"
            )
        return found


def read_keys(path: Path) -> list[ApiKey]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise KeySetError(f"cannot read {path}: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeySetError(f"{path}: expected an object with a `keys` list")
    keys = []
    for entry in entries:
        try:
            keys.append(
                ApiKey(
                    id=str(entry["id"]),
                    digest=str(entry["sha256"]),
                    project=entry.get("project") or None,
                    kind="management" if entry.get("kind") == "management" else "runtime",
                    created_at=int(entry.get("created_at", 0)),
                    label=entry.get("label") or None,
                )
            )
        except (KeyError, TypeError, ValueError):
            raise KeySetError(f"{path}: malformed key entry") from None
    return keys


def create_key(
    path: Path, *, project: str | None, kind: Kind, now: int, label: str | None = None
) -> tuple[str, ApiKey]:
    """Make a key, store its hash, and return (the plain key, the stored entry).

    With a `label`, an earlier key of the same label is replaced (so `make run` keeps one dev key).
    """
    prefix = MANAGEMENT_PREFIX if kind == "management" else RUNTIME_PREFIX
    plain = prefix + secrets.token_urlsafe(32)
    entry = ApiKey(f"key_{secrets.token_hex(6)}", digest(plain), project, kind, now, label)
    kept = [key for key in read_keys(path) if label is None or key.label != label]
    keys = [*kept, entry]
    body = {
        "keys": [
            {
                "id": key.id,
                "sha256": key.digest,
                "project": key.project,
                "kind": key.kind,
                "created_at": key.created_at,
                **({"label": key.label} if key.label else {}),
            }
            for key in keys
        ]
    }
    atomic_write(path, (json.dumps(body, indent=2) + "\n").encode("utf-8"), mode=0o600)
    return plain, entry


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.apikeys create --project ID [--kind management] | list`."""
    import argparse

    from app.config import Settings
    from app.exceptions import SettingsError

    parser = argparse.ArgumentParser(prog="python -m app.apikeys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="create a key and print it once, alone on the last line")
    make.add_argument("--project", default="", help="project id the key belongs to")
    make.add_argument("--kind", choices=["runtime", "management"], default="runtime")
    make.add_argument(
        "--no-project",
        action="store_true",
        help="make a key with no project (only useful to test rejections)",
    )
    make.add_argument("--label", help="replace the earlier key with this label")
    sub.add_parser("list", help="list stored keys (ids and projects, never the keys)")
    parser.add_argument("--file", type=Path, help="key file (default: REALTIME_API_KEYS_FILE)")
    args = parser.parse_args(argv)
    try:
        path: Path = args.file or Settings.from_environ(os.environ).api_keys_path
        if args.command == "list":
            for key in read_keys(path):
                print(f"{key.id}  {key.kind:<10} project={key.project or '-'}")
            return 0
        project = args.project.strip() or None
        if project is None and not args.no_project:
            print("error: say which project the key is for: PROJECT=<id>", file=sys.stderr)
            return 2
        plain, entry = create_key(
            path, project=project, kind=args.kind, now=int(time.time()), label=args.label
        )
    except (KeySetError, SettingsError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"created {entry.kind} key {entry.id} for project {entry.project or '-'} in {path}")
    print("store it now; it is not shown again:")
    print(plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
