"""The short paths for the events relayed most give what the long ones give.

`forwarded` (audio and turn control checked without the models) must pass exactly the events that
`parse_event` passes, as `model_dump` gives them, and leave every other frame to it; `encode_event`
(orjson for flat events of strings) must give `json`'s exact text.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.session.events import encode_event, forwarded, parse_event
from app.sessionerrors import InvalidEventError

PROPERTY = settings(max_examples=1500, deadline=None)
_JSON = json.JSONEncoder(separators=(",", ":")).encode

kinds = st.sampled_from(
    ["audio.append", "audio.commit", "audio.clear", "response.create", "response.cancel", "text.input",
     "session.start", "session.update", "tool.result", "audio.Append", "", "audio.commit "]
)  # fmt: skip
base64ish = st.text(alphabet="ABCDab09+/=", max_size=12) | st.text(max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | base64ish
)
members = st.dictionaries(st.sampled_from(["audio", "text", "config", "id", "x"]), scalars, max_size=3)


@st.composite
def frames(draw: st.DrawFn) -> str:
    event: dict[str, Any] = draw(members)
    if draw(st.booleans()):
        event["type"] = draw(kinds | scalars)
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    # Sometimes what JSON encoders never write: a non-finite number, a duplicate, a broken document.
    extra = draw(st.sampled_from(["", ', "audio": NaN', ', "type": "audio.commit"', ', "audio": 1e400', "]"]))
    return text[:-1] + extra + "}" if extra and text != "{}" else text


def _long_way(frame: str) -> dict[str, Any] | None:
    try:
        return parse_event(frame).model_dump(exclude_none=True)
    except InvalidEventError:
        return None


@PROPERTY
@given(frames())
def test_forwarded_passes_what_parse_event_passes_as_it_dumps_it(frame: str) -> None:
    short = forwarded(frame)
    if short is not None:
        assert short == _long_way(frame)


@PROPERTY
@given(st.sampled_from(["audio.commit", "audio.clear", "response.create", "response.cancel"]), members)
def test_valid_turn_control_takes_the_short_path(kind: str, extra: dict[str, Any]) -> None:
    frame = json.dumps({**extra, "type": kind})
    assert forwarded(frame) == _long_way(frame) == {"type": kind}


def test_audio_takes_the_short_path_only_when_it_is_base64() -> None:
    assert forwarded('{"type":"audio.append","audio":"AAAA","id":1}') == {
        "type": "audio.append",
        "audio": "AAAA",
    }
    for refused in ('"AAA"', '"AA=A"', '"A==="', '"AA\\u00e9A"', "null", "4", '["AAAA"]'):
        frame = '{"type":"audio.append","audio":' + refused + "}"
        assert forwarded(frame) is None
        assert _long_way(frame) is None
    assert forwarded(b'{"type":"audio.commit"}') is None  # binary: parse_event's answer


flat = st.dictionaries(st.text(max_size=6), st.text(max_size=20), max_size=4)
nested = st.dictionaries(
    st.text(max_size=4), st.none() | st.integers() | st.floats() | st.text(max_size=8) | flat, max_size=4
)


@PROPERTY
@given(flat | nested)
def test_encode_event_gives_json_exact_text(event: dict[str, Any]) -> None:
    assert encode_event(event) == _JSON(event)


def test_encode_event_escapes_as_json_does() -> None:
    for value in ("\x7f", "é", "\ud800", '\x00\n"\\/', "AAAA"):
        assert encode_event({"type": "audio.delta", "audio": value}) == _JSON(
            {"type": "audio.delta", "audio": value}
        )
