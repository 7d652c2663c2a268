"""The server: `python -m app.serve` (cli), uvicorn and the server's bounds.

cli          the start command's options and start-up checks
runner       uvicorn's settings for the service, listening sockets, draining shutdown
connections  the server's bounds on connections: cap, handshake deadline, head size
frames       the server's bounds on WebSocket frames: rate, fragments, parsing
workers      --workers N: the supervisor
"""
