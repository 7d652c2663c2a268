"""`tool.result` answers a `tool.call` the session sent: any other id is a non-fatal `invalid_event`,
and with tools locked to none nothing is forwarded. The session core as a table, then a real socket."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from app.config import Settings
from app.session.actions import Action, SendClient, SendUpstream
from app.session.binding import Binding, prepare_binding
from app.session.core import SessionCore
from app.session.models import ModelRegistry
from app.session.toolcalls import MAX_OPEN_TOOL_CALLS
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys
from tests.servers import ServiceProcess

Event = dict[str, Any]
T0 = 1_000.0
REGISTRY = ModelRegistry.load()
OPENAI = "openai/gpt-realtime-2"
TOOLS = [{"name": "weather"}]


def core_with(config: Event, binding: Binding | None = None) -> SessionCore:
    core = SessionCore("sess_t", project="p", binding=binding, settings=Settings(), registry=REGISTRY, now=T0)
    core.receive_client(json.dumps({"type": "session.start", "config": config}), T0)
    core.connected(T0)
    return core


def call(call_id: str, *, relayed: bool = False) -> Event | str:
    event = {"type": "tool.call", "tool_call_id": call_id, "tool_name": "weather", "tool_arguments": "{}"}
    return json.dumps(event) if relayed else event


def result(core: SessionCore, call_id: str) -> list[Action]:
    frame = {"type": "tool.result", "tool_call_id": call_id, "tool_result": "sunny"}
    return core.receive_client(json.dumps(frame), T0)


def outcome(actions: list[Action]) -> str:
    """`forwarded`, or the code of the error the client got."""
    (action,) = actions
    if isinstance(action, SendUpstream):
        assert action.event == {
            "type": "tool.result",
            "tool_call_id": action.event["tool_call_id"],
            "tool_result": "sunny",
        }
        return "forwarded"
    assert isinstance(action, SendClient) and isinstance(action.event, dict), action
    assert action.event["type"] == "error" and "tool.call" in action.event["error"]["message"]
    return str(action.event["error"]["code"])


LOCKED_NONE = prepare_binding({"model": OPENAI}, ["tools"], REGISTRY)

# case: (config, binding, tool.call ids the upstream sends (", relayed" as a frame), tool.result ids
# in order, what each result meets)
CASES: dict[str, tuple[Event, Binding | None, list[str], list[str], list[str]]] = {
    "never-called": ({"model": OPENAI, "tools": TOOLS}, None, [], ["call_1"], ["invalid_event"]),
    "called": ({"model": OPENAI, "tools": TOOLS}, None, ["call_1"], ["call_1"], ["forwarded"]),
    "called-relayed": (
        {"model": OPENAI, "tools": TOOLS},
        None,
        ["call_1, relayed"],
        ["call_1"],
        ["forwarded"],
    ),
    "answered-twice": (
        {"model": OPENAI, "tools": TOOLS},
        None,
        ["call_1"],
        ["call_1", "call_1"],
        ["forwarded", "invalid_event"],
    ),
    "another-id": ({"model": OPENAI, "tools": TOOLS}, None, ["call_1"], ["call_2"], ["invalid_event"]),
    "two-calls-any-order": (
        {"model": OPENAI, "tools": TOOLS},
        None,
        ["call_1", "call_2"],
        ["call_2", "call_1"],
        ["forwarded", "forwarded"],
    ),
    "no-tools-configured": ({"model": OPENAI}, None, ["call_1"], ["call_1"], ["invalid_event"]),
    "tools-locked-to-none": (
        {"model": OPENAI, "tools": TOOLS},  # the client's tools are dropped by the lock
        LOCKED_NONE,
        ["call_1"],  # an upstream that calls anyway
        ["call_1"],
        ["invalid_event"],
    ),
}


@pytest.mark.parametrize(
    ("config", "binding", "calls", "results", "expected"), CASES.values(), ids=list(CASES)
)
def test_tool_results_answer_tool_calls_of_this_session(
    config: Event, binding: Binding | None, calls: list[str], results: list[str], expected: list[str]
) -> None:
    core = core_with(config, binding)
    for entry in calls:
        call_id, _, relayed = entry.partition(", ")
        assert core.receive_upstream(call(call_id, relayed=bool(relayed)))
    assert [outcome(result(core, call_id)) for call_id in results] == expected
    assert not core.over  # a refused tool.result is non-fatal


def test_open_tool_calls_are_bounded_oldest_forgotten_first() -> None:
    core = core_with({"model": OPENAI, "tools": TOOLS})
    for number in range(MAX_OPEN_TOOL_CALLS + 1):
        core.receive_upstream(call(f"call_{number}"))
    assert outcome(result(core, "call_0")) == "invalid_event"
    assert outcome(result(core, "call_1")) == "forwarded"
    assert outcome(result(core, f"call_{MAX_OPEN_TOOL_CALLS}")) == "forwarded"


# A real socket ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, str]]:
    tmp_path = tmp_path_factory.mktemp("tools")
    keys = tmp_path / "keys"
    ensure_keys(keys, now=int(time.time()) - 60)
    key, _ = create_key(keys / "api_keys.json", project="acme", kind="runtime", now=int(time.time()))
    with ServiceProcess(env={"REALTIME_KEYS_DIR": str(keys)}, log_path=tmp_path / "service.log") as process:
        yield process, key


def events_until(ws: ClientConnection, last: str) -> list[Event]:
    events: list[Event] = []
    while not events or events[-1]["type"] != last:
        events.append(json.loads(ws.recv(timeout=30)))
    return events


def send(ws: ClientConnection, event: Event) -> None:
    ws.send(json.dumps(event))


@contextmanager
def session(process: ServiceProcess, key: str, body: Event) -> Iterator[ClientConnection]:
    minted = httpx.post(
        process.url + "/v3/realtime-sessions",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
    )
    assert minted.status_code == 200, minted.text
    with connect(
        process.ws_url,
        subprotocols=[Subprotocol(f"opper-ticket.{minted.json()['client_secret']}")],
        open_timeout=10,
    ) as ws:
        yield ws


def test_a_tool_result_over_a_real_socket(served: tuple[ServiceProcess, str]) -> None:
    process, key = served
    with session(process, key, {"config": {"model": OPENAI, "tools": TOOLS, "modalities": ["text"]}}) as ws:
        send(ws, {"type": "session.start"})
        events_until(ws, "session.started")
        send(ws, {"type": "tool.result", "tool_call_id": "call_made_up", "tool_result": "sunny"})
        (refused,) = events_until(ws, "error")
        assert refused["error"]["code"] == "invalid_event"
        send(ws, {"type": "text.input", "text": "what is the weather"})
        send(ws, {"type": "response.create"})
        tool_call = next(
            event for event in events_until(ws, "response.completed") if event["type"] == "tool.call"
        )
        send(ws, {"type": "tool.result", "tool_call_id": tool_call["tool_call_id"], "tool_result": "sunny"})
        send(ws, {"type": "response.create"})
        answer = "".join(e.get("delta", "") for e in events_until(ws, "response.completed"))
        assert "sunny" in answer


def test_with_tools_locked_to_none_a_tool_result_is_never_forwarded(
    served: tuple[ServiceProcess, str],
) -> None:
    process, key = served
    body = {"config": {"model": OPENAI, "modalities": ["text"]}, "locked_fields": ["tools"]}
    with session(process, key, body) as ws:
        send(ws, {"type": "session.start", "config": {"tools": TOOLS}})  # overridden by the lock
        events_until(ws, "session.started")
        send(ws, {"type": "tool.result", "tool_call_id": "call_1", "tool_result": "secret-weather"})
        (refused,) = events_until(ws, "error")
        assert refused["error"]["code"] == "invalid_event"
        send(ws, {"type": "text.input", "text": "hello"})
        send(ws, {"type": "response.create"})
        answer = "".join(e.get("delta", "") for e in events_until(ws, "response.completed"))
        assert answer and "secret-weather" not in answer
