"""`python -m bench.granian_edge --port N`: the service's app (`create_app`) under granian, one worker.

For the bench only (granian is not a dependency of the service): the same app, keys and settings as
`python -m app.serve`, on granian's ASGI interface instead of uvicorn. What `python -m app.serve` adds at the
uvicorn level does not run here: the connection cap, the WebSocket protocol's per-frame buckets and
ping bound, the handshake timeout, the drain on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from starlette.applications import Starlette

from app.config import Settings
from app.main import create_app
from app.server.runner import tune_gc


def create() -> Starlette:
    # With settings, as `python -m app.serve` gives them: `create_app()` alone refuses an outside server.
    app = create_app(Settings.from_environ(os.environ))
    tune_gc()  # the same collector settings as `python -m app.serve`
    return app


def main(argv: Sequence[str] | None = None) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    parser = argparse.ArgumentParser(prog="python -m bench.granian_edge", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    Granian(
        "bench.granian_edge:create",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
    ).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
