"""One ticket followed through a real `python -m app.serve` process's log by its `tid`: the mint line,
the redemption line, a refusal line and the session-end line, in the text format and in JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from app.logs import LINE, Format, JsonFormat, RedactSecrets, fields
from app.tickets.apikeys import create_key
from app.tickets.claims import tid
from app.tickets.keys import KeySet
from app.tickets.rotation import ensure_keys
from app.tickets.sealkeys import SEAL_FILE, SealKeySet
from app.tickets.ticket import verify
from tests.servers import ServiceProcess

PROJECT = "proj_trace"
TID = re.compile(r"^[A-Za-z0-9_-]{12}$")


def jti_of(keys_dir: Path, ticket: str) -> str:
    return verify(
        ticket,
        KeySet.load(keys_dir),
        seal_keys=SealKeySet.load(keys_dir / SEAL_FILE),
        issuer="opper-realtime",
        audience="opper-realtime",
        leeway=5,
        max_bytes=6144,
        now=time.time(),
    ).jti


def follow_one_ticket(tmp_path: Path, log_format: str) -> tuple[str, str, str, str, str]:
    """Mint, redeem, present again, end: (log, ticket, jti, tid, session id)."""
    keys_dir = tmp_path / "keys"
    ensure_keys(keys_dir, now=int(time.time()) - 60)
    api_key, _ = create_key(keys_dir / "api_keys.json", project=PROJECT, kind="runtime", now=int(time.time()))
    env = {"REALTIME_KEYS_DIR": str(keys_dir), "REALTIME_LOG_FORMAT": log_format}
    with ServiceProcess(env=env, log_path=tmp_path / "service.log") as service:
        response = httpx.post(
            service.url + "/v3/realtime-sessions",
            headers={"Authorization": f"Bearer {api_key}"},
            json={"config": {"voice": "marin"}},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        ticket = response.json()["client_secret"]
        protocols = [Subprotocol("opper-ticket." + ticket)]
        with connect(service.ws_url, subprotocols=protocols, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "session.start", "config": {"model": "openai/gpt-realtime-2"}}))
            started: dict[str, Any] = json.loads(ws.recv(timeout=10))
            assert started["type"] == "session.started", started
        with pytest.raises(InvalidStatus):
            connect(service.ws_url, subprotocols=protocols, open_timeout=10)
        session = started["session_id"]
        deadline = time.monotonic() + 20
        while not re.search(f"session ended.*{session}", log := service.settled_log()):
            assert time.monotonic() < deadline, "the session's end was never logged"
            time.sleep(0.05)
    jti = jti_of(keys_dir, ticket)
    assert TID.match(tid(jti))
    return log, ticket, jti, tid(jti), session


def test_text_lines_carry_the_tid_from_mint_to_session_end(tmp_path: Path) -> None:
    log, ticket, jti, trace, session = follow_one_ticket(tmp_path, "text")
    traced = [line for line in log.splitlines() if f"tid={trace}" in line]
    assert len(traced) == 4, traced  # minted, redemption ok, then session ended and the refusal
    minted, accepted = traced[:2]
    # The session's end and the second presentation's refusal may come in either order.
    ended = next(line for line in traced if "session ended" in line)
    refused = next(line for line in traced if "ticket_replayed" in line)
    assert " INFO app.edge.mint: minted ticket tid=" in minted and f"project={PROJECT}" in minted
    assert "bound=voice" in minted
    assert "app.edge.realtime: redemption ok " in accepted and f"session_id={session}" in accepted
    assert "redemption ticket_replayed " in refused and "session_id" not in refused
    assert f"app.edge.realtime: session ended session_id={session} tid={trace}" in ended
    assert "code=client_gone" in ended and re.search(r" duration_s=[0-9.]+", ended)
    assert jti not in log and ticket not in log and ticket.split(".")[-1] not in log


def test_json_lines_carry_the_tid_from_mint_to_session_end(tmp_path: Path) -> None:
    log, ticket, jti, trace, session = follow_one_ticket(tmp_path, "json")
    lines = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line), line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["ts"])
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's lines too
    traced = [line for line in lines if line.get("tid") == trace]
    assert [line["msg"] for line in traced[:2]] == ["minted ticket", "redemption ok"]
    assert sorted(line["msg"] for line in traced[2:]) == ["redemption ticket_replayed", "session ended"]
    minted, accepted = traced[:2]
    ended = next(line for line in traced if line["msg"] == "session ended")
    refused = next(line for line in traced if line["msg"] == "redemption ticket_replayed")
    assert minted["logger"] == "app.edge.mint" and minted["project"] == PROJECT and minted["ttl"] == 60
    assert accepted["session_id"] == session and accepted["level"] == "INFO"
    assert "session_id" not in refused
    assert ended["session_id"] == session and ended["code"] == "client_gone"
    assert isinstance(ended["duration_s"], float) and ended["duration_s"] >= 0
    assert jti not in log and ticket not in log and ticket.split(".")[-1] not in log


def record(message: str, **values: object) -> logging.LogRecord:
    made = logging.getLogger("app.test").makeRecord(
        "app.test", logging.WARNING, __file__, 1, message, (), None, extra=fields(**values)
    )
    RedactSecrets().filter(made)
    return made


def test_control_characters_and_secrets_never_reach_a_line_raw() -> None:
    forged = "evil\n2026-01-01 00:00:00,000 INFO app.edge.realtime: redemption ok\x1b[31m\u2028\x7f"
    ticket = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJwIn0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
    made = record(f"path {forged} ?ticket={ticket}", project=forged, model=ticket, tid="abc")
    for line in (JsonFormat().format(made), Format(LINE).format(made)):
        assert "\n" not in line and "\x1b" not in line and "\u2028" not in line and "\x7f" not in line
        assert ticket not in line
    body = json.loads(JsonFormat().format(made))
    assert body["project"].startswith("evil\\x0a2026") and body["tid"] == "abc"
    assert body["model"] == "[redacted]"  # a field's value is redacted like a message
    text = Format(LINE).format(made)
    # A field value with a space or `=` is quoted: it cannot pose as a field of its own.
    assert ' project="evil\\\\x0a2026-01-01 ' in text and text.endswith(" tid=abc")


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.getLogger("app.test").makeRecord(
            "app.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormat().format(made)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]
