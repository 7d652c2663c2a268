"""TLS contexts for tests, over the throw-away certificates `make cluster TLS=1` uses (`app.ops.tls`)."""

from __future__ import annotations

import ssl
from pathlib import Path

from app.ops.tls import make_certificates


def localhost_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts: the server presents a certificate for 127.0.0.1 the client trusts."""
    ca, certificate, key = make_certificates(directory, hosts=("127.0.0.1",))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate, key)
    client = ssl.create_default_context(cafile=str(ca))
    return server, client
