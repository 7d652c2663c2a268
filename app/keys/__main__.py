"""`python -m app.keys`: runs `app.ops.keys`."""

from __future__ import annotations

import sys

from app.ops.keys import main

if __name__ == "__main__":
    sys.exit(main())
