"""`python -m app.serve --workers N`: N worker processes sharing the listening sockets, supervised.

The supervisor restarts a worker that dies, stops when one dies while starting, and on SIGTERM or
SIGINT tells every worker to drain (each exits once its sessions are closed).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time

from app.server.runner import DRAIN_SECONDS, LOG

WORKER_START_GRACE = 10.0  # a worker that dies sooner is broken, not unlucky: stop instead of looping
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: a worker gets SIGTERM when its supervisor dies, so no worker outlives a killed parent."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(argv: list[str], sockets: list[socket.socket], workers: int) -> int:
    """Run `workers` copies of `argv` sharing `sockets`; restart one that dies; SIGTERM/SIGINT drain all.

    Each worker runs in its own session (a terminal's Ctrl-C reaches only this supervisor, which
    passes it on once) and is told to stop if this process dies.
    """
    fds = [sock.fileno() for sock in sockets]
    command = [*argv, "--worker-fds", ",".join(map(str, fds))]
    received: list[int] = []
    failed = False

    def start() -> tuple[subprocess.Popen[bytes], float]:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, pass_fds=fds, start_new_session=True, preexec_fn=_die_with_parent
        )
        LOG.info("Started worker process [%d]", process.pid)
        return process, time.monotonic()

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        for sock in sockets:  # our copy: once the workers close theirs, the port refuses new connections
            sock.close()
        for process, _ in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    running = [start() for _ in range(workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = float("inf")
    while True:
        if received and deadline == float("inf"):
            deadline = time.monotonic() + DRAIN_SECONDS + 20
        for index, (process, started) in enumerate(running):
            code = process.poll()
            if code is None or received:
                continue
            # Exiting by itself (not killed by a signal) right after the start: broken, not unlucky.
            if code >= 0 and time.monotonic() - started < WORKER_START_GRACE:
                LOG.error("worker [%d] exited with %s while starting; stopping", process.pid, code)
                failed = True
                on_signal(signal.SIGTERM, None)
                break
            LOG.warning("worker [%d] exited with %s; starting another", process.pid, code)
            running[index] = start()
        if received and all(process.poll() is not None for process, _ in running):
            break
        if time.monotonic() > deadline:
            for process, _ in running:
                if process.poll() is None:
                    LOG.warning("worker [%d] did not stop in time; killing it", process.pid)
                    process.kill()
        time.sleep(0.1)
    for process, _ in running:
        process.wait()
    LOG.info("Stopped %d workers", workers)
    if failed:
        return 1
    return 130 if received[0] == signal.SIGINT else 0
