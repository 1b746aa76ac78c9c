"""`load_json`: what the stdlib's json would let through, refused as a `ContractError`."""

from __future__ import annotations

import pytest

from writejobs.core import json_input
from writejobs.core.json_input import MAX_DEPTH, load_json, shown
from writejobs.errors import ContractError


def nested(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"[]" + b"}" * (levels - 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"n": NaN}', "holds NaN, which is not a JSON number"),
        (b'{"n": Infinity}', "holds Infinity"),
        (b'{"n": [-Infinity]}', "holds -Infinity"),
        (b'{"n": 1e400}', "n holds a number out of a double's range"),
        (b'{"n": [1, -1e999]}', "n[1] holds a number out of a double's range"),
        (b'{"a": [{"b": 1.0}, {"c": 2e308}]}', "a[1].c holds a number out of a double's range"),
        (b'{"n": 1e400, "m": NaN}', "holds NaN, which is not a JSON number"),
        # Whichever the walk meets first is named, as before the parser's float check.
        (b'{"n": 1e400, "m": ' + b"[" * 40 + b"]" * 40 + b"}", "n holds a number out of"),
        (b'{"m": ' + b"[" * 40 + b"]" * 40 + b', "n": 1e400}', "nested deeper than 32 levels"),
        (b"1e400", "request body holds a number out of a double's range"),
        (b'{"n": ' + b"1" * 5000 + b"}", "holds an integer of more than 100 digits"),
        (b'{"r": {"n": -' + b"9" * 101 + b"}}", "r.n holds an integer of more than 100 digits"),
        (b"1" * 150, "request body holds an integer of more than 100 digits"),
        (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels (at a.a.a"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "levels (at [0][0][0]"),
        (b"[" * 1000 + b"]" * 1000, f"nested deeper than {MAX_DEPTH} levels"),
        (b"[" * 200_000 + b"]" * 200_000, f"nested deeper than {MAX_DEPTH} levels"),
        (b'{"record": {"name": "\\ud800"}}', "record.name holds a lone UTF-16 surrogate"),
        (b'{"record": {"name": ["ok", "\\udfff"]}}', "record.name[1] holds a lone"),
        (b'{"record": {"\\ud800": 1}}', "record.\\ud800 holds a lone UTF-16 surrogate"),
        # Raw surrogate bytes, which json decodes with surrogatepass
        (b'{"x": "\xed\xa0\x80"}', "x holds a lone UTF-16 surrogate"),
        (b"\xff{}", "not valid JSON"),
        (b'{"a": ', "not valid JSON"),
    ],
)
def test_what_no_provider_can_take_is_refused_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(ContractError) as refused:
        load_json(body)
    assert message in str(refused.value)
    assert len(str(refused.value)) < 300


def test_what_real_records_hold_is_read_as_json_reads_it() -> None:
    body = (
        '{"a": 1.5, "big": 123456789012345678901234567890, "pair": "\\ud83d\\ude00",'
        ' "text": "prénom", "neg": -0.0, "long": 0.' + "1" * 200 + ', "max": ' + "9" * 100 + ","
        ' "deep": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    ).encode() + b"}"
    document = load_json(body)
    assert document["big"] == 123456789012345678901234567890
    assert document["max"] == 10**100 - 1
    assert document["pair"] == "\U0001f600"
    assert document["text"] == "prénom"
    assert document["a"] == 1.5 and type(document["a"]) is float
    assert str(document["neg"]) == "-0.0"


def test_a_long_key_is_quoted_by_a_short_prefix_only() -> None:
    body = b'{"' + b"k" * 1_000_000 + b'": "\\udc00"}'
    with pytest.raises(ContractError) as refused:
        load_json(body)
    assert len(str(refused.value)) < 200


def test_shown_cuts_a_long_value_and_says_how_long_it_was() -> None:
    assert shown("short") == "'short'"
    assert shown("x" * 10_000) == "'" + "x" * 59 + "… (10000 characters)"


@pytest.mark.parametrize(
    ("body", "harmless"),
    [
        (b'{"groupRef": "g", "record": {"email": "a@example.com", "n": 12, "x": 1.5e10}}', True),
        ('{"name": "Zoë"}'.encode(), True),
        (b'{"x": "\\u00e9"}', False),  # any escape: walked
        # Floats are checked as they are parsed (`_finite`), so an exponent is no doubt.
        (b'{"email": "b-1e234@example.com", "x": 1e400}', True),
        (b'{"x": "\xed\xa0\x80"}', False),  # a surrogate's bytes
        (b'{"x": "\xed\x9f\xbf"}', True),  # U+D7FF, the last code point before them
        (b'{"x": "id-' + b"12345" * 21 + b'"}', False),  # 105 digits, if only in a string
        (b'{"x": "id-' + b"12345" * 20 + b'"}', True),
        (b"[" * 33 + b"]" * 33, False),
        (b'{"x": ' + b"9" * 101 + b"}", False),
        ('{"x": 1}'.encode("utf-16"), False),
    ],
)
def test_only_bodies_that_cannot_hold_a_refused_value_skip_the_walk(
    body: bytes, harmless: bool
) -> None:
    assert json_input._surely_harmless(body, json_input.MAX_DEPTH) is harmless
