"""The one strict JSON reader: what it refuses, by name, and what it reads as `json` does."""

from __future__ import annotations

import pytest

from app import strictjson


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"a": 1, "a": 2}', strictjson.DuplicateMemberError),
        ('{"a": NaN}', strictjson.NotANumberError),
        ('{"a": -Infinity}', strictjson.NotANumberError),
        ('{"a": 1e400}', strictjson.NotANumberError),
        ('{"a": }', ValueError),
        ("[" * 100_000 + "]" * 100_000, RecursionError),
    ],
    ids=["duplicate", "nan", "infinity", "beyond-a-double", "broken", "too-deep"],
)
def test_refused(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        strictjson.loads(text)


def test_the_duplicate_is_named() -> None:
    with pytest.raises(strictjson.DuplicateMemberError) as caught:
        strictjson.loads('{"outer": {"x": 1, "y": 2, "x": 3}}')
    assert caught.value.member == "x"


def test_last_wins_only_when_asked() -> None:
    assert strictjson.loads('{"a": 1, "a": 2}', unique_names=False) == {"a": 2}
    with pytest.raises(strictjson.NotANumberError):
        strictjson.loads('{"a": NaN}', unique_names=False)


def test_reads_ordinary_json() -> None:
    assert strictjson.loads('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
