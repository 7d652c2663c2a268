"""API keys: hashed at rest, checked in constant time, reloaded on change; `python -m app.apikeys`.

The file (`keys/api_keys.json` by default) holds one entry per key: an id, the SHA-256 of the key,
the project, the kind, and optionally a label, an expiry and a revocation time. Keys are 256 random
bits, so a fast hash is enough: there is nothing to brute-force, unlike a password. The plain key
is printed once, when it is made, and never stored (except `make run`'s dev key: see `dev_key`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.exceptions import InvalidCredentialsError, KeySetError, MissingCredentialsError
from app.files import Reloading, atomic_write

Kind = Literal["runtime", "management"]
logger = logging.getLogger(__name__)
RUNTIME_PREFIX = "oprk-"
MANAGEMENT_PREFIX = "opmak-"
DEV_KEY_FILE = "dev_api_key"  # the plain dev key of `make run`, beside api_keys.json


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without the secret."""

    id: str
    digest: str
    project: str | None
    kind: Kind
    created_at: int
    label: str | None = None
    expires_at: int | None = None
    revoked_at: int | None = None

    def refusal(self, now: float) -> str | None:
        """Why this key cannot be used at `now` (revoked, expired), or None."""
        if self.revoked_at is not None:
            return f"the API key was revoked at {_when(self.revoked_at)}"
        if self.expires_at is not None and now >= self.expires_at:
            return f"the API key expired at {_when(self.expires_at)}"
        return None


def _when(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


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
    """The hashed keys of one file, reloaded when the file changes (checked at most every 0.5 s).

    A broken file (by hand, or a tool gone wrong) never breaks a request: the last good set stays
    in use and one WARNING line says so (see `app.files.Reloading`).
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        check_interval: float = 0.5,
    ) -> None:
        self.path = path
        self._clock = clock
        self._file: Reloading[dict[str, ApiKey]] = Reloading(
            path,
            lambda: {key.digest: key for key in read_keys(path)},
            initial={},
            what="api keys",
            size=len,
            log=logger,
            clock=clock,
            interval=check_interval,
        )

    def load(self) -> ApiKeyStore:
        """Read the file now (start-up); a missing file means no keys yet, a broken one is logged."""
        self._file.check()
        return self

    def check(self, token: str) -> ApiKey:
        """The runtime key for `token`, with its project.

        Raises:
            InvalidCredentialsError: unknown, revoked or expired key, a management key, or a key with
                no project.
        """
        computed = digest(token)
        found = self._file.get().get(computed)
        if found is None:
            # A key made a moment ago works at once: one stat() on a miss, a reload only if it changed.
            found = self._file.check().get(computed)
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
        refusal = found.refusal(self._clock())
        if refusal is not None:
            raise InvalidCredentialsError(refusal)
        if not found.project:
            raise InvalidCredentialsError(
                "the API key belongs to no project: use a project-scoped runtime key"
            )
        return found


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return int(value)  # OverflowError for 1e400 (inf), ValueError for NaN


def _optional_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def read_keys(path: Path) -> list[ApiKey]:
    """The keys stored in `path` (none when it is missing).

    Raises:
        KeySetError: unreadable or malformed file (any shape: wrong types, huge numbers, deep nesting).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as exc:
        raise KeySetError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeySetError(f"{path}: expected an object with a `keys` list")
    keys = []
    for number, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise TypeError("expected an object")
            key_id, sha = entry["id"], entry["sha256"]
            if not isinstance(key_id, str) or not isinstance(sha, str):
                raise TypeError("id and sha256 must be strings")
            keys.append(
                ApiKey(
                    id=key_id,
                    digest=sha,
                    project=_optional_str(entry.get("project")),
                    kind="management" if entry.get("kind") == "management" else "runtime",
                    created_at=_optional_int(entry.get("created_at")) or 0,
                    label=_optional_str(entry.get("label")),
                    expires_at=_optional_int(entry.get("expires_at")),
                    revoked_at=_optional_int(entry.get("revoked_at")),
                )
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise KeySetError(f"{path}: malformed key entry #{number}: {type(exc).__name__}") from None
    return keys


def write_keys(path: Path, keys: Sequence[ApiKey]) -> None:
    """Replace the file with `keys`, atomically, readable by its owner only."""
    body = {
        "keys": [
            {
                "id": key.id,
                "sha256": key.digest,
                "project": key.project,
                "kind": key.kind,
                "created_at": key.created_at,
                **({"label": key.label} if key.label else {}),
                **({"expires_at": key.expires_at} if key.expires_at is not None else {}),
                **({"revoked_at": key.revoked_at} if key.revoked_at is not None else {}),
            }
            for key in keys
        ]
    }
    atomic_write(path, (json.dumps(body, indent=2) + "\n").encode("utf-8"), mode=0o600)


def create_key(
    path: Path,
    *,
    project: str | None,
    kind: Kind,
    now: int,
    label: str | None = None,
    expires_at: int | None = None,
) -> tuple[str, ApiKey]:
    """Make a key, store its hash, and return (the plain key, the stored entry).

    With a `label`, an earlier key of the same label is replaced (so `make run` keeps one dev key).
    """
    prefix = MANAGEMENT_PREFIX if kind == "management" else RUNTIME_PREFIX
    plain = prefix + secrets.token_urlsafe(32)
    entry = ApiKey(f"key_{secrets.token_hex(6)}", digest(plain), project, kind, now, label, expires_at)
    kept = [key for key in read_keys(path) if label is None or key.label != label]
    write_keys(path, [*kept, entry])
    return plain, entry


def revoke_key(path: Path, key_id: str, *, now: int) -> ApiKey:
    """Mark the key `key_id` revoked (kept in the file, so listings show it); returns it.

    Raises:
        KeySetError: no key with that id.
    """
    keys = read_keys(path)
    found = next((key for key in keys if key.id == key_id), None)
    if found is None:
        raise KeySetError(f"no API key with id {key_id!r} in {path} (see make api-keys)")
    if found.revoked_at is not None:
        return found
    revoked = dataclasses.replace(found, revoked_at=now)
    write_keys(path, [revoked if key.id == key_id else key for key in keys])
    return revoked


def dev_key(path: Path, keep: Path, *, project: str, now: int) -> tuple[str, bool]:
    """The dev key `make run` prints: the one kept in `keep` while it still works, else a new one.

    Returns (the key, whether it is new). The plain key is kept (mode 0600, beside the signing keys)
    only for this dev key, so that restarting `make run` does not invalidate a key already in use.
    """
    try:
        kept = keep.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        kept = ""
    if kept:
        stored = {key.digest: key for key in read_keys(path)}.get(digest(kept))
        if stored is not None and stored.project == project and stored.refusal(now) is None:
            return kept, False
    plain, _ = create_key(path, project=project, kind="runtime", now=now, label="make-run")
    atomic_write(keep, (plain + "\n").encode("utf-8"), mode=0o600)
    return plain, True


def _table(keys: Sequence[ApiKey], now: float) -> list[str]:
    header = ("id", "project", "kind", "label", "created", "expires", "revoked")
    rows = [header] + [
        (
            key.id,
            key.project or "-",
            key.kind,
            key.label or "-",
            _when(key.created_at),
            _when(key.expires_at) + (" (expired)" if key.expires_at and now >= key.expires_at else ""),
            _when(key.revoked_at),
        )
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _days(raw: str) -> float:
    try:
        days = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"EXPIRES must be a number of days, got {raw!r}") from None
    if not 0 < days <= 36_500:
        raise argparse.ArgumentTypeError(f"EXPIRES must be more than 0 and at most 36500 days, got {raw!r}")
    return days


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.apikeys create --project ID [--expires-days N] | list | revoke --id ID | dev`."""
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
    make.add_argument("--expires-days", type=_days, help="the key stops working after this many days")
    sub.add_parser("list", help="list stored keys (id, project, kind, label, dates; never the keys)")
    revoke = sub.add_parser(
        "revoke", help="revoke a key by its id; running servers refuse it within a second"
    )
    revoke.add_argument("--id", required=True, help="the key id (key_...), as `list` shows it")
    dev = sub.add_parser("dev", help="print the dev key `make run` uses, making it when missing")
    dev.add_argument("--project", default="dev")
    parser.add_argument("--file", type=Path, help="key file (default: REALTIME_API_KEYS_FILE)")
    args = parser.parse_args(argv)
    now = int(time.time())
    try:
        settings = Settings.from_environ(os.environ)
        path: Path = args.file or settings.api_keys_path
        if args.command == "list":
            for line in _table(read_keys(path), now):
                print(line)
            return 0
        if args.command == "revoke":
            key = revoke_key(path, args.id.strip(), now=now)
            print(f"revoked {key.id} (project {key.project or '-'}) at {_when(key.revoked_at)}")
            return 0
        if args.command == "dev":
            plain, new = dev_key(path, path.parent / DEV_KEY_FILE, project=args.project, now=now)
            how = "created" if new else "reusing"
            print(f"{how} the dev API key for project {args.project} (kept in {path.parent / DEV_KEY_FILE}):")
            print(plain)
            return 0
        project = args.project.strip() or None
        if project is None and not args.no_project:
            print("error: say which project the key is for: PROJECT=<id>", file=sys.stderr)
            return 2
        expires_at = now + round(args.expires_days * 86_400) if args.expires_days else None
        plain, entry = create_key(
            path, project=project, kind=args.kind, now=now, label=args.label, expires_at=expires_at
        )
    except (KeySetError, SettingsError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    until = f", expires {_when(entry.expires_at)}" if entry.expires_at else ""
    print(f"created {entry.kind} key {entry.id} for project {entry.project or '-'} in {path}{until}")
    print("store it now; it is not shown again:")
    print(plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
