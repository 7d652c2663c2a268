"""`python -m app.serve`: the one start command (`app.server.cli`)."""

from __future__ import annotations

import sys

from app.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
