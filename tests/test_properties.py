"""Property tests: whatever a client sends to the mint or the static route, a documented answer.

Hypothesis generates bodies and names; each must end in a 2xx or a documented 4xx with its error
code, never an exception escaping to a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from app import exceptions, sessionerrors
from app.config import Settings
from app.edge.mint import parse_body
from app.main import create_app
from app.tickets.apikeys import create_key
from app.tickets.rotation import ensure_keys

PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: Every code a mint body can earn: the request and config branches of the error tree.
MINT_BODY_CODES = {
    cls.code
    for cls in [*vars(exceptions).values(), *vars(sessionerrors).values()]
    if isinstance(cls, type) and issubclass(cls, exceptions.RequestError | sessionerrors.ConfigError)
}

names = st.sampled_from(["config", "locked_fields", "ttl_seconds", "model", "voice", "tools", "x", ""])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(names | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# Raw fragments that JSON encoders never produce but clients can: non-finite numbers, huge
# literals, duplicated members, deep nesting, broken encodings.
fragments = st.sampled_from(
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e400",
        b"-1e400",
        b"9" * 5000,
        b"[" * 2000,
        b'{"a":' * 40 + b"1" + b"}" * 40,
        b'{"ttl_seconds":1,"ttl_seconds":2}',
        b"\xff\xfe",
        b"\x00",
        b'"\\ud800"',
    ]
)


def raw_bodies() -> st.SearchStrategy[bytes]:
    encoded = json_values.map(lambda value: json.dumps(value).encode())
    spliced = st.tuples(json_values, fragments).map(
        lambda pair: (
            b'{"config":{"temperature":%s},"ttl_seconds":%s}' % (json.dumps(pair[0]).encode(), pair[1])
        )
    )
    deep = st.tuples(
        st.integers(min_value=1, max_value=3000), st.sampled_from([b"[", b'{"config":', b'{"a":['])
    ).map(lambda pair: pair[1] * pair[0])
    return st.one_of(encoded, spliced, fragments, deep, st.binary(max_size=200))


@pytest.fixture(scope="module")
def minting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    keys_dir: Path = tmp_path_factory.mktemp("props") / "keys"
    ensure_keys(keys_dir, now=1_700_000_000)
    settings_ = Settings(keys_dir=keys_dir)
    api_key, _ = create_key(settings_.api_keys_path, project="proj_props", kind="runtime", now=1_700_000_000)
    with TestClient(create_app(settings_), raise_server_exceptions=True) as client:
        yield client, api_key


@PROPERTY
@given(raw=raw_bodies())
def test_parse_body_returns_an_object_or_raises_a_documented_error(raw: bytes) -> None:
    try:
        body = parse_body(raw)
    except (exceptions.InvalidJSONError, exceptions.InvalidRequestError) as exc:
        assert exc.status == 400 and exc.code in {"invalid_json", "invalid_request"}
    else:
        assert isinstance(body, dict) and set(body) <= {"config", "locked_fields", "ttl_seconds"}


@PROPERTY
@given(raw=raw_bodies())
def test_the_mint_answers_any_body_with_200_or_a_documented_400(
    minting: tuple[TestClient, str], raw: bytes
) -> None:
    client, api_key = minting
    response = client.post(
        "/v3/realtime-sessions",
        content=raw,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    if response.status_code == 200:
        assert response.json()["client_secret"]
        return
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] in MINT_BODY_CODES, error


@PROPERTY
@given(
    name=st.tuples(st.text(max_size=300), st.sampled_from(["", ".js", ".css", ".html", ".py"])).map("".join)
    | st.sampled_from(["demo.js", "demo.css", "index.html"])
)
def test_the_static_route_answers_any_name_with_200_or_404(
    minting: tuple[TestClient, str], name: str
) -> None:
    client, _ = minting
    if name in {"", ".", ".."}:
        return  # `/static/` is the router's 404; dot segments are resolved by the client, never sent
    response = client.get("/static/" + quote(name, safe=""))
    assert response.status_code in (200, 404), response.text
    if response.status_code == 404:
        assert response.json()["error"]["code"] == "not_found"
    else:
        assert name in {"demo.js", "demo.css"}
