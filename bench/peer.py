"""`python -m bench.peer`: the naive peer, what a user writes from this design in about fifty lines.

A Starlette app on the same uvicorn settings as the service. The mint looks the bearer key up in a
dict, reads the JSON body, clamps `ttl_seconds` and signs with PyJWT; the WebSocket takes the ticket
from the subprotocol, decodes it with PyJWT (`iss`, `aud`, required claims), remembers its `jti` in a
cachetools `TTLCache`, accepts and answers `session.start` with `session.started`. No schema check,
metrics, audit log, origin or cap check: the service does all of these and must still be faster.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from cachetools import TTLCache
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.config import Settings
from app.server.runner import tune_gc, uvicorn_config
from app.tickets.keys import KeySet

ISSUER = AUDIENCE = "opper-realtime"
PREFIX = "opper-ticket."


def build(keys_dir: Path, api_keys: dict[str, str]) -> Starlette:
    signer = KeySet.load(keys_dir).signer
    assert signer is not None and signer.private_key is not None
    private, public, kid = signer.private_key, signer.public_key, signer.kid
    used: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=310)

    async def mint(request: Request) -> JSONResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        project = api_keys.get(token)
        if project is None:
            return JSONResponse({"error": "invalid_credentials"}, status_code=401)
        body = await request.json()
        ttl = max(1, min(300, int(body.get("ttl_seconds", 60))))
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": project, "iat": now}
        claims |= {"exp": now + ttl, "jti": secrets.token_urlsafe(16), "cfg": body.get("config") or {}}
        ticket = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + ttl))
        url = f"ws://{request.headers['host']}/v3/realtime?ticket={ticket}"
        return JSONResponse({"client_secret": ticket, "expires_at": expires, "ws_url": url})

    async def realtime(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        token = next((p[len(PREFIX) :] for p in offered if p.startswith(PREFIX)), "")
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=["EdDSA"],
                issuer=ISSUER,
                audience=AUDIENCE,
                options={"require": ["exp", "iat", "jti", "sub"]},
            )
        except jwt.InvalidTokenError:
            await websocket.close(1008)
            return
        if claims["jti"] in used:
            await websocket.close(1008)
            return
        used[claims["jti"]] = True
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        try:
            while True:
                event = await websocket.receive_json()
                if event.get("type") == "session.start":
                    session_id = f"sess_{secrets.token_hex(12)}"
                    await websocket.send_json({"type": "session.started", "session_id": session_id})
        except WebSocketDisconnect:
            return

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v3/realtime-sessions", mint, methods=["POST"]),
            WebSocketRoute("/v3/realtime", realtime),
            Route("/healthz", healthz),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-dir", type=Path, required=True)
    parser.add_argument(
        "--stock",
        action="store_true",
        help="run as a user would (`uvicorn app:app`): uvicorn's own protocol classes and defaults",
    )
    args = parser.parse_args(argv)
    # `KEY=PROJECT`, from the environment so that the key stays out of the process list.
    api_keys = dict([os.environ.get("BENCH_PEER_API_KEY", "=").split("=", 1)])
    app = build(args.keys_dir, api_keys)
    if args.stock:
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info")
    else:
        config = uvicorn_config(app, Settings(), host=args.host, port=args.port, log_level="info", bare=True)
        tune_gc()  # the same process settings as the service
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
