"""`python -m app.tickets inspect [TICKET]`: open, verify and judge one ticket (`make inspect`)."""

from __future__ import annotations

import sys

from app.tickets.inspect import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["inspect"]:
        print("usage: python -m app.tickets inspect [TICKET | -]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
