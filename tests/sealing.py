"""Test helper: read a ticket's header and claims, opening a sealed one with the keys dir's seal keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.tickets import jwe
from app.tickets.base64url import b64url_decode
from app.tickets.sealkeys import SEAL_FILE, SealKeySet


def signed_part(ticket: str, keys_dir: Path) -> str:
    """The compact JWS of a ticket: the ticket itself when plain, its decrypted content when sealed."""
    parts = ticket.split(".")
    if len(parts) == 3:
        return ticket
    assert len(parts) == 5, f"neither a JWS nor a JWE: {len(parts)} parts"
    return jwe.unseal(parts, SealKeySet.load(keys_dir / SEAL_FILE)).decode("ascii")


def segment_json(segment: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(b64url_decode(segment))
    return value


def claims_of(ticket: str, keys_dir: Path) -> dict[str, Any]:
    return segment_json(signed_part(ticket, keys_dir).split(".")[1])


def signing_kid(ticket: str, keys_dir: Path) -> str:
    kid: str = segment_json(signed_part(ticket, keys_dir).split(".")[0])["kid"]
    return kid
