"""`python -m app.apikeys`: runs `app.ops.apikeys`."""

from __future__ import annotations

import sys

from app.ops.apikeys import main

if __name__ == "__main__":
    sys.exit(main())
