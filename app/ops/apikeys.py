"""`python -m app.apikeys {create,list,revoke,dev}`: the API key file's commands.

`make api-key`, `make api-keys`, `make revoke-api-key` and `make run` (its dev key) call this.
`create` prints the plain key once, alone on stdout (what it did, with the key id, goes to stderr),
and never stores it (except the dev key); `list` shows each key's first 8 characters, never more.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from app.config import Settings
from app.edge.redisrevocations import record
from app.edge.revocations import Revocation, settings_lifetime
from app.exceptions import KeySetError, ReplayStoreUnavailableError, SettingsError
from app.tickets.apikeys import DEV_KEY_FILE, ApiKey, create_key, dev_key, read_keys, revoke_key, utc_time


def _table(keys: Sequence[ApiKey], now: float) -> list[str]:
    header = ("id", "key", "project", "kind", "label", "created", "expires", "revoked")
    rows = [header] + [
        (
            key.id,
            f"{key.shown}..." if key.shown else "-",
            key.project or "-",
            key.kind,
            key.label or "-",
            utc_time(key.created_at),
            utc_time(key.expires_at) + (" (expired)" if key.expires_at and now >= key.expires_at else ""),
            utc_time(key.revoked_at),
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
    parser = argparse.ArgumentParser(prog="python -m app.apikeys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="create a key and print it once, alone on stdout (its id on stderr)")
    make.add_argument("--project", default="", help="project id the key belongs to")
    make.add_argument("--kind", choices=["runtime", "management"], default="runtime")
    make.add_argument(
        "--no-project",
        action="store_true",
        help="make a key with no project (only useful to test rejections)",
    )
    make.add_argument("--label", help="a note shown by `list` (other keys with this label stay)")
    make.add_argument("--expires-days", type=_days, help="the key stops working after this many days")
    sub.add_parser(
        "list", help="list stored keys (id, first 8 characters, project, kind, label, dates; never the keys)"
    )
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
            print(f"revoked {key.id} (project {key.project or '-'}) at {utc_time(key.revoked_at)}")
            # Its tickets and live sessions too: edges sharing this file see it there; a fleet's
            # edges through the store.
            at = key.revoked_at or now
            revocation = Revocation("api_key", key.id, at, at + settings_lifetime(settings), key.project)
            if record(settings, revocation):
                print("its tickets and live sessions are revoked across the fleet")
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
    except (KeySetError, SettingsError, ReplayStoreUnavailableError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    until = f", expires {utc_time(entry.expires_at)}" if entry.expires_at else ""
    print(
        f"created {entry.kind} key {entry.id} for project {entry.project or '-'} in {path}{until}; "
        "store it now, it is not shown again:",
        file=sys.stderr,
    )
    print(plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
