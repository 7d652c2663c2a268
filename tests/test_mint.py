"""`POST /v3/realtime-sessions`: the failure matrix of docs/api.md, and what a good mint returns."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.clock import FakeClock
from app.config import Settings
from app.edge.mint import read_request
from app.exceptions import InvalidJSONError
from app.main import create_app
from app.session.binding import Binding
from app.session.models import ModelRegistry
from app.sessionerrors import UnknownModelError
from app.tickets.apikeys import create_key
from app.tickets.keys import KeySet
from app.tickets.sealkeys import SealKeySet
from app.tickets.ticket import verify
from tests.conftest import PROJECT, START
from tests.sealing import claims_of, signing_kid

URL = "/v3/realtime-sessions"
MODEL = "openai/gpt-realtime-2"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    code: str = body["error"]["code"]
    return code


# Authentication (401) -----------------------------------------------------------------------


def _key(settings: Settings, *, kind: str = "runtime", project: str | None = PROJECT) -> str:
    plain, _ = create_key(settings.api_keys_path, project=project, kind=kind, now=int(START))  # type: ignore[arg-type]
    return plain


@pytest.mark.parametrize(
    ("make_headers", "code", "message"),
    [
        (lambda s: {}, "missing_credentials", "Bearer"),
        (lambda s: {"Authorization": "Basic dXNlcjpwYXNz"}, "missing_credentials", "Bearer"),
        (lambda s: {"Authorization": "Bearer "}, "missing_credentials", "empty"),
        (lambda s: auth("oprk-not-a-real-key"), "invalid_credentials", "not valid"),
        (lambda s: auth("opmak-" + "x" * 40), "invalid_credentials", "management"),
        (lambda s: auth(_key(s, kind="management")), "invalid_credentials", "management"),
        (lambda s: auth(_key(s, project=None)), "invalid_credentials", "no project"),
    ],
    ids=["no-header", "basic", "empty-bearer", "unknown", "opmak-prefix", "management-kind", "no-project"],
)
def test_401(client: TestClient, settings: Settings, make_headers: Any, code: str, message: str) -> None:
    response = client.post(URL, headers=make_headers(settings), json={})
    assert response.status_code == 401
    assert error_of(response) == code
    assert message in response.json()["error"]["message"]
    assert response.headers["www-authenticate"] == "Bearer"


# Request shape (400, 413) -------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, Any, int, str, str]] = [
    # id, body (bytes are sent raw), status, code, text the message must contain
    ("not-json", b"{nope", 400, "invalid_json", "JSON"),
    ("top-level-null", b"null", 400, "invalid_json", "object"),
    ("top-level-list", b"[]", 400, "invalid_json", "object"),
    ("nan", b'{"ttl_seconds": NaN}', 400, "invalid_json", "JSON"),
    ("unknown-top-level-field", {"model": MODEL}, 400, "invalid_request", "'model'"),
    ("config-not-object", {"config": "voice=ash"}, 400, "invalid_request", "config"),
    ("locked-not-list", {"locked_fields": "voice"}, 400, "invalid_request", "locked_fields"),
    ("locked-not-strings", {"locked_fields": [1]}, 400, "invalid_request", "locked_fields"),
    ("ttl-string", {"ttl_seconds": "60"}, 400, "invalid_request", "ttl_seconds"),
    ("ttl-bool", {"ttl_seconds": True}, 400, "invalid_request", "ttl_seconds"),
    ("ttl-float", {"ttl_seconds": 60.5}, 400, "invalid_request", "ttl_seconds"),
    ("ttl-float-integral", {"ttl_seconds": 60.0}, 400, "invalid_request", "ttl_seconds"),
    ("ttl-1e9", b'{"ttl_seconds": 1e9}', 400, "invalid_request", "ttl_seconds"),
    ("unknown-locked-field", {"locked_fields": ["voice", "colour"]}, 400, "unknown_locked_field", "colour"),
    ("unknown-config-field", {"config": {"colour": "red"}}, 400, "invalid_config", "colour"),
    ("temperature-empty-string", {"config": {"temperature": ""}}, 400, "invalid_config", "temperature"),
    ("temperature-out-of-range", {"config": {"temperature": 3}}, 400, "invalid_config", "temperature"),
    ("modalities-video", {"config": {"modalities": ["video"]}}, 400, "invalid_config", "modalities"),
    (
        "reasoning-extreme",
        {"config": {"reasoning_effort": "extreme"}},
        400,
        "invalid_config",
        "reasoning_effort",
    ),
    ("model-locked-not-bound", {"locked_fields": ["model"]}, 400, "invalid_config", "model"),
    ("unknown-model", {"config": {"model": "acme/parrot-1"}}, 400, "unknown_model", "acme/parrot-1"),
    ("voice-not-of-model", {"config": {"model": MODEL, "voice": "Puck"}}, 400, "unsupported_voice", "Puck"),
    (
        "reasoning-on-xai",
        {"config": {"model": "xai/grok-voice-latest", "reasoning_effort": "low"}},
        400,
        "unsupported_reasoning_effort",
        "",
    ),
    (
        "ticket-too-large",
        {"config": {"instructions": base64.b64encode(random.Random(7).randbytes(6000)).decode()}},
        400,
        "ticket_too_large",
        "6144",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests(
    client: TestClient, api_key: str, body: Any, status: int, code: str, message: str
) -> None:
    if isinstance(body, bytes):
        response = client.post(
            URL, headers={**auth(api_key), "Content-Type": "application/json"}, content=body
        )
    else:
        response = client.post(URL, headers=auth(api_key), json=body)
    assert response.status_code == status, response.text
    assert error_of(response) == code
    assert message in response.json()["error"]["message"]


def test_ticket_too_large_gives_limit_and_size(client: TestClient, api_key: str) -> None:
    instructions = base64.b64encode(random.Random(7).randbytes(6000)).decode()
    response = client.post(URL, headers=auth(api_key), json={"config": {"instructions": instructions}})
    details = response.json()["error"]["details"]
    assert details["limit"] == 6144 and details["size"] > 6144


def test_413_for_a_body_over_64_kib(client: TestClient, api_key: str) -> None:
    body = json.dumps({"config": {"instructions": "x" * 70_000}})
    response = client.post(URL, headers={**auth(api_key), "Content-Type": "application/json"}, content=body)
    assert response.status_code == 413
    assert error_of(response) == "request_too_large"


def test_413_without_content_length(client: TestClient, api_key: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"config": {"instructions": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}}'

    response = client.post(URL, headers=auth(api_key), content=chunks())
    assert response.status_code == 413
    assert error_of(response) == "request_too_large"


# Order of checks: 503, then 401, then 413, then 400 -----------------------------------------


def test_order_503_before_401(settings: Settings, clock: FakeClock) -> None:
    app = create_app(Settings(keys_dir=settings.keys_dir, tickets_enabled=False), clock=clock)
    with TestClient(app) as client:
        response = client.post(URL, content=b"{nope")
    assert response.status_code == 503
    assert error_of(response) == "tickets_disabled"


def test_order_401_before_413(client: TestClient) -> None:
    response = client.post(URL, content=b"x" * 70_000)
    assert response.status_code == 401


def test_order_413_before_400(client: TestClient, api_key: str) -> None:
    response = client.post(URL, headers=auth(api_key), content=b"{nope" + b"x" * 70_000)
    assert response.status_code == 413


def test_tickets_disabled_with_a_valid_key(settings: Settings, api_key: str, clock: FakeClock) -> None:
    app = create_app(Settings(keys_dir=settings.keys_dir, tickets_enabled=False), clock=clock)
    with TestClient(app) as client:
        response = client.post(URL, headers=auth(api_key), json={})
    assert response.status_code == 503
    assert error_of(response) == "tickets_disabled"


# Success ------------------------------------------------------------------------------------


def test_mint_defaults(client: TestClient, api_key: str, keyset: KeySet, keys_dir: Path) -> None:
    response = client.post(URL, headers=auth(api_key))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"client_secret", "expires_at", "ws_url"}
    assert body["expires_at"] == "2027-01-15T08:01:00Z"  # START + 60 s
    assert body["ws_url"] == f"ws://testserver/v3/realtime?ticket={body['client_secret']}"
    assert len(body["client_secret"].split(".")) == 5  # sealed by default
    ticket = verify(
        body["client_secret"],
        keyset,
        seal_keys=SealKeySet.load(keys_dir / "seal.json"),
        issuer="opper-realtime",
        audience="opper-realtime",
        leeway=5,
        max_bytes=6144,
        now=START,
    )
    assert ticket.project == PROJECT and ticket.config == {} and ticket.locked == ()


@pytest.mark.parametrize(
    ("ttl", "lifetime"),
    [(0, 1), (-5, 1), (1, 1), (300, 300), (301, 300), (10**12, 300)],
    ids=["zero", "negative", "one", "max", "over", "huge"],
)
def test_ttl_is_clamped(client: TestClient, api_key: str, keys_dir: Path, ttl: int, lifetime: int) -> None:
    response = client.post(URL, headers=auth(api_key), json={"ttl_seconds": ttl})
    assert response.status_code == 200
    claims = claims_of(response.json()["client_secret"], keys_dir)
    assert claims["exp"] - claims["iat"] == lifetime


def test_binding_keeps_non_zero_fields_and_locks(client: TestClient, api_key: str, keys_dir: Path) -> None:
    response = client.post(
        URL,
        headers=auth(api_key),
        json={
            "config": {"model": MODEL, "voice": "marin", "instructions": "", "output_transcription": False},
            "locked_fields": ["output_transcription", "instructions"],
            "ttl_seconds": None,
        },
    )
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["client_secret"], keys_dir)
    assert claims["cfg"] == {"model": MODEL, "voice": "marin"}
    assert sorted(claims["lck"]) == ["instructions", "output_transcription"]


def test_a_repeated_body_mints_a_new_ticket_with_the_same_binding(
    client: TestClient, api_key: str, keys_dir: Path
) -> None:
    body = {"config": {"model": MODEL, "voice": "marin"}, "locked_fields": ["voice"], "ttl_seconds": 30}
    first, second = (client.post(URL, headers=auth(api_key), json=body) for _ in range(2))
    claims = [claims_of(response.json()["client_secret"], keys_dir) for response in (first, second)]
    assert claims[0]["jti"] != claims[1]["jti"]
    for each in claims:
        assert each["cfg"] == {"model": MODEL, "voice": "marin"} and each["lck"] == ["voice"]
        assert each["exp"] - each["iat"] == 30


def test_a_remembered_body_is_checked_against_each_deployments_models() -> None:
    raw = json.dumps({"config": {"model": MODEL}}).encode()
    everything = ModelRegistry.load()
    assert read_request(raw, everything) == (60, Binding({"model": MODEL}))
    elsewhere = everything.serving(lambda model: model.id != MODEL)
    with pytest.raises(UnknownModelError, match="not served"):
        read_request(raw, elsewhere)


def test_a_refused_body_is_refused_again() -> None:
    raw = b'{"config": {"voice": "marin", "voice": "cedar"}}'
    for _ in range(2):
        with pytest.raises(InvalidJSONError, match="twice"):
            read_request(raw, ModelRegistry.load())


def test_locked_fields_without_config(client: TestClient, api_key: str, keys_dir: Path) -> None:
    response = client.post(URL, headers=auth(api_key), json={"locked_fields": ["output_transcription"]})
    assert response.status_code == 200
    claims = claims_of(response.json()["client_secret"], keys_dir)
    assert "cfg" not in claims and claims["lck"] == ["output_transcription"]


def test_null_fields_mean_absent(client: TestClient, api_key: str) -> None:
    response = client.post(URL, headers=auth(api_key), json={"config": None, "locked_fields": None})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"public_ws_url": "wss://rt.example.com/v3/realtime"}, "wss://rt.example.com/v3/realtime?ticket="),
        ({"ws_url_enabled": False}, ""),
    ],
    ids=["public-url", "disabled"],
)
def test_ws_url_settings(
    keys_dir: Path, api_key: str, clock: FakeClock, changes: dict[str, Any], expected: str
) -> None:
    app = create_app(Settings(keys_dir=keys_dir, **changes), clock=clock)
    with TestClient(app) as client:
        body = client.post(URL, headers=auth(api_key)).json()
    if expected:
        assert body["ws_url"] == expected + body["client_secret"]
    else:
        assert body["ws_url"] == ""


def test_next_ticket_uses_the_rotated_key(
    client: TestClient, api_key: str, keys_dir: Path, clock: FakeClock
) -> None:
    from app.tickets.rotation import rotate

    first = claims_of(client.post(URL, headers=auth(api_key)).json()["client_secret"], keys_dir)
    before = client.post(URL, headers=auth(api_key)).json()["client_secret"]
    rotate(keys_dir, now=int(START))
    clock.advance(1)  # past the key source's 0.5 s check interval
    after = client.post(URL, headers=auth(api_key)).json()["client_secret"]
    assert first["sub"] == PROJECT
    assert signing_kid(before, keys_dir) != signing_kid(after, keys_dir)
    assert before.split(".")[0] != after.split(".")[0]  # sealed with the rotated seal key too


# Error bodies for routing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", URL, 405, "method_not_allowed"),
        ("POST", URL + "/", 404, "not_found"),
        ("GET", "/v3/nothing", 404, "not_found"),
        ("POST", "/.well-known/jwks.json", 405, "method_not_allowed"),
    ],
    ids=["get-mint", "trailing-slash-no-redirect", "unknown-path", "post-jwks"],
)
def test_routing_errors_are_json(client: TestClient, method: str, path: str, status: int, code: str) -> None:
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == status
    assert error_of(response) == code


def test_jwks_endpoint_serves_public_keys(client: TestClient, keyset: KeySet) -> None:
    body = client.get("/.well-known/jwks.json").json()
    assert {jwk["kid"] for jwk in body["keys"]} == {key.kid for key in keyset.keys}
    for jwk in body["keys"]:
        assert jwk == {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": jwk["x"],
            "kid": jwk["kid"],
            "alg": "EdDSA",
            "use": "sig",
        }


# Routing errors say what to fix ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "hints"),
    [
        (
            "POST",
            "/v3/realtime-sessions/",
            404,
            "not_found",
            ["/v3/realtime-sessions/", "POST /v3/realtime-sessions"],
        ),
        ("GET", "/v3/nope", 404, "not_found", ["/v3/nope", "GET /v3/models"]),
        ("GET", "/v3/realtime-sessions", 405, "method_not_allowed", ["GET", "POST"]),
        ("POST", "/v3/models", 405, "method_not_allowed", ["POST", "use ", "GET"]),
        ("DELETE", "/.well-known/jwks.json", 405, "method_not_allowed", ["DELETE", "use ", "GET"]),
    ],
)
def test_404_and_405_say_what_to_fix(
    client: TestClient, method: str, path: str, status: int, code: str, hints: list[str]
) -> None:
    response = client.request(method, path)
    assert (response.status_code, error_of(response)) == (status, code)
    message = response.json()["error"]["message"]
    assert all(hint in message for hint in hints), message


def test_an_unknown_api_key_says_what_to_use(client: TestClient) -> None:
    response = client.post(URL, headers=auth("oprk-not-a-real-key"), json={})
    assert (response.status_code, error_of(response)) == (401, "invalid_credentials")
    assert "make api-key" in response.json()["error"]["message"]


def test_a_404_never_echoes_a_ticket_in_the_path(client: TestClient, api_key: str) -> None:
    ticket = client.post(URL, headers=auth(api_key), json={}).json()["client_secret"]
    response = client.get(f"/v3/{ticket}")
    assert (response.status_code, error_of(response)) == (404, "not_found")
    assert ticket[:40] not in response.text and "[redacted]" in response.json()["error"]["message"]
