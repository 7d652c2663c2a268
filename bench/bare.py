"""`python -m bench.bare`: the baseline, a bare Starlette app on the same uvicorn settings as app.serve.

`POST /v3/realtime-sessions` reads a JSON body and answers a JSON object of the service's size (read
from `--response-file`); `/v3/realtime` accepts, echoes one text frame and waits for the close.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.serve import tune_gc, uvicorn_config


def build(template: dict[str, Any]) -> Starlette:
    async def mint(request: Request) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"error": "not an object"}, status_code=400)
        return JSONResponse(template, headers={"Cache-Control": "no-store"})

    async def echo(websocket: WebSocket) -> None:
        offered = websocket.headers.get("sec-websocket-protocol", "")
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        try:
            await websocket.send_text(await websocket.receive_text())
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            return

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v3/realtime-sessions", mint, methods=["POST"]),
            WebSocketRoute("/v3/realtime", echo),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--response-file", type=Path)
    args = parser.parse_args(argv)
    template: dict[str, Any] = {"client_secret": "", "expires_at": "", "ws_url": ""}
    if args.response_file is not None:
        template = json.loads(args.response_file.read_text())
    config = uvicorn_config(
        build(template), host=args.host, port=args.port, log_level=args.log_level, ws_max_size=1 << 21
    )
    server = uvicorn.Server(config)
    tune_gc()  # the same process settings as the service
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
