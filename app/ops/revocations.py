"""`python -m app.ops.revocations revoke`, which `make revoke` runs: revoke across the fleet."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from app.config import Settings
from app.edge import revocations
from app.edge.redisrevocations import record
from app.edge.revocations import MAX_REASON, MAX_VALUE, Kind, Revocation, settings_lifetime
from app.exceptions import KeySetError, ReplayStoreUnavailableError, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.ops.revocations revoke --session ID | --project ID | --kid KID | --api-key ID`."""
    parser = argparse.ArgumentParser(prog="python -m app.ops.revocations", description=revocations.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    revoke = sub.add_parser("revoke", help="revoke across the fleet (REALTIME_REPLAY_URL must be redis://)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", help="a live session id (sess_...)")
    which.add_argument("--project", help="a project: its tickets issued so far and its live sessions")
    which.add_argument("--kid", help="a signing key id: the tickets it signed and their sessions")
    which.add_argument("--api-key", help="an API key id (key_...): its tickets and sessions")
    revoke.add_argument("--reason", default="", help="said to the clients whose sessions end")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
        kind: Kind
        if args.session:
            kind, value, project = "session", args.session, None
        elif args.project:
            kind, value, project = "project", args.project, args.project
        elif args.kid:
            kind, value, project = "kid", args.kid, None
        else:
            from app.tickets.apikeys import read_keys  # the key's project, for the admin API's listing

            stored = [key for key in read_keys(settings.api_keys_path) if key.id == args.api_key.strip()]
            kind, value, project = "api_key", args.api_key, stored[0].project if stored else None
        value = value.strip()
        if not value or len(value) > MAX_VALUE or len(args.reason) > MAX_REASON:
            print("error: the id must be 1 to 200 characters, the reason at most 500", file=sys.stderr)
            return 2
        now = time.time()
        revocation = Revocation(kind, value, now, now + settings_lifetime(settings), project, args.reason)
        if not record(settings, revocation):
            print(
                "error: REALTIME_REPLAY_URL is memory://: revocations live in the serving process; "
                "use its admin API (POST /v3/admin/revocations, docs/api.md)",
                file=sys.stderr,
            )
            return 1
    except (SettingsError, KeySetError, ReplayStoreUnavailableError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"revoked {kind} {value}; every edge refuses its tickets and ends its sessions within a second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
