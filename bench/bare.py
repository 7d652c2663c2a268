"""`python -m bench.bare`: the baselines, bare Starlette apps on the uvicorn settings of `app.serve`.

`POST /v3/realtime-sessions` reads a JSON body and answers a JSON object of the service's size (read
from `--response-file`); `/v3/realtime` accepts, echoes one text frame and waits for the close.

Floors: the same bare endpoints plus only the unavoidable work, to show what this stack costs at the
least. With `--keys-dir`, the POST also signs the service's signing input with the raw Ed25519 key
and the WebSocket also verifies the presented ticket's signature with the raw public key. With
`--relay-to URL`, `/v3/realtime` instead passes frames unchanged between the client and that upstream
(`Authorization: Bearer $BENCH_RELAY_KEY`), with no checks at all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.edge.handshake import TICKET_PROTOCOL
from app.server.runner import tune_gc, uvicorn_config
from app.tickets.keys import KeySet


def _unpadded(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _signing(keys_dir: Path | None, template: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """The POST's answer: the template, or with `keys_dir` a template whose ticket is signed anew."""
    if keys_dir is None:
        return lambda: template
    signer = KeySet.load(keys_dir).signer
    assert signer is not None and signer.private_key is not None  # noqa: S101 - bench setup
    private = signer.private_key
    head = str(template["client_secret"]).rpartition(".")[0]
    signing_input = head.encode("ascii")

    def sign() -> dict[str, Any]:
        signature = base64.urlsafe_b64encode(private.sign(signing_input)).rstrip(b"=").decode("ascii")
        return {**template, "client_secret": f"{head}.{signature}"}

    return sign


def _verifying(keys_dir: Path | None) -> Callable[[WebSocket], bool]:
    """Whether the presented ticket's signature verifies (always true without `keys_dir`)."""
    if keys_dir is None:
        return lambda websocket: True
    signer = KeySet.load(keys_dir).signer
    assert signer is not None  # noqa: S101 - bench setup
    public = signer.public_key

    def check(websocket: WebSocket) -> bool:
        for offered in websocket.scope.get("subprotocols") or ():
            if offered.startswith(TICKET_PROTOCOL):
                head, _, signature = offered[len(TICKET_PROTOCOL) :].rpartition(".")
                try:
                    public.verify(_unpadded(signature), head.encode("ascii"))
                except Exception:  # noqa: BLE001 - any failure is a refusal here
                    return False
                return True
        return False

    return check


async def _pass_through(websocket: WebSocket, url: str, key: str) -> None:
    """Frames both ways, unchanged, until either side closes."""
    offered = websocket.headers.get("sec-websocket-protocol", "")
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    async with connect(
        url,
        additional_headers={"Authorization": f"Bearer {key}"},
        subprotocols=["realtime"],  # type: ignore[list-item]
        compression=None,
    ) as upstream:

        async def up() -> None:
            try:
                while True:
                    await upstream.send(await websocket.receive_text())
            except WebSocketDisconnect:
                return

        async def down() -> None:
            try:
                async for frame in upstream:
                    await websocket.send_text(str(frame))
            except ConnectionClosed:
                return

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def build(
    template: dict[str, Any], *, keys_dir: Path | None = None, relay_to: str | None = None
) -> Starlette:
    answer = _signing(keys_dir, template)
    verified = _verifying(keys_dir)

    async def mint(request: Request) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"error": "not an object"}, status_code=400)
        return JSONResponse(answer(), headers={"Cache-Control": "no-store"})

    async def echo(websocket: WebSocket) -> None:
        if relay_to is not None:
            await _pass_through(websocket, relay_to, os.environ.get("BENCH_RELAY_KEY", ""))
            return
        if not verified(websocket):
            await websocket.close(1008)
            return
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
    parser.add_argument("--keys-dir", type=Path, help="floor: sign and verify with this key set")
    parser.add_argument("--relay-to", help="floor: pass /v3/realtime frames to this upstream URL")
    args = parser.parse_args(argv)
    template: dict[str, Any] = {"client_secret": "", "expires_at": "", "ws_url": ""}
    if args.response_file is not None:
        template = json.loads(args.response_file.read_text())
    app = build(template, keys_dir=args.keys_dir, relay_to=args.relay_to)
    config = uvicorn_config(
        app, Settings(), host=args.host, port=args.port, log_level=args.log_level, bare=True
    )
    server = uvicorn.Server(config)
    tune_gc()  # the same process settings as the service
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
