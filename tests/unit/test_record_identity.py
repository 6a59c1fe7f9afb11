"""A record's identity (the hash of its canonical JSON) and the card-number pre-check: the fast
paths give exactly what the plain definitions give, so stored rows keep deduplicating."""

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.models.base import time_ordered_id
from app.processors.base import RawItem, canonical_json, response_json, response_page
from app.processors.normalize.records import (
    _DIGIT_RUN_BYTES,
    _PAN_KEY_BYTES,
    may_hold_card_number,
)

# Text with what the two encoders could disagree on: control characters, DEL, non-ASCII
# (accents, CJK, emoji beyond the BMP), quotes and backslashes.
_TEXT = st.text(
    alphabet=st.sampled_from(
        [
            "a",
            "Z",
            "0",
            "9",
            " ",
            '"',
            "\\",
            "/",
            "\x00",
            "\x01",
            "\x1f",
            "\x7f",
            "\x80",
            "é",
            "\u2028",
            "中",
            "😀",
            ".",
            "e",
            "E",
            ":",
            ",",
            "[",
            "-",
            "+",
        ]
    ),
    max_size=12,
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


def _plain(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_TEXT, _JSON, max_size=6))
def test_parsed_records_have_the_canonical_body_and_hash(payload: dict[str, Any]) -> None:
    fast = RawItem.from_parsed(payload, "x")
    plain = RawItem.from_json(payload, "x")
    assert fast.body == plain.body == _plain(payload)
    assert fast.content_hash == plain.content_hash


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_TEXT, _JSON, max_size=6), max_size=4), st.sampled_from([None, 2]))
def test_records_of_a_page_have_the_canonical_body(
    records: list[dict[str, Any]], indent: int | None
) -> None:
    """A page said to hold no float holds none, however it is spelled: its records' bodies,
    built without searching them for one, are the canonical JSON."""
    text = json.dumps({"data": records}, indent=indent).encode()
    page, floats = response_page(httpx.Response(200, content=text))
    if not floats:
        assert not any(isinstance(v, float) for v in _leaves(page))
    for record in page["data"]:
        assert RawItem.from_parsed(record, None, floats=floats).body == _plain(record)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_a_page_of_integers_and_timestamps_holds_no_float() -> None:
    text = b'{"data": [{"created": 1761234567, "amount": -500, "at": 12, "ids": [1, 2]}]}'
    assert response_page(httpx.Response(200, content=text))[1] is False
    for spelled in (b'{"a": 1.5}', b'{"a":[ 2e3]}', b'{"a": [1, -0.5]}', b'{"a":\n1E2}'):
        assert response_page(httpx.Response(200, content=spelled))[1] is True


@pytest.mark.parametrize(
    "payload",
    [
        {"amount": 1e-05},
        {"a": [0.1, 1e16, -0.0, 1.5e300]},
        {"n": 2**64},
        {"n": -(2**63) - 1},
        {"s": "caf\u00e9 \x7f \x00 \u2028 \U0001f600"},
        {"z": 1, "a": {"y": None, "b": [True, False]}},
        {"id": "ch_1e5", "note": "ratio:3.5, [2e3]"},
        {"tiny": 1e-7, "huge": 1e22, "flag": True, "off": False},
        {"quote": 'say "hi" \\', "x": [1e-7]},
        {"quote": 'say "hi"', "n": [1, -2, 3]},
    ],
)
def test_awkward_values_keep_the_canonical_body(payload: dict[str, Any]) -> None:
    assert RawItem.from_parsed(payload, None).body == _plain(payload)
    assert canonical_json(payload) == _plain(payload)


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"a": [Infinity]}', b'{"a": -Infinity}', b'{"a": 1e400}', b"[-1E999]"],
)
def test_non_finite_numbers_are_refused_as_not_json(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        response_json(httpx.Response(200, content=body))


def test_integers_beyond_64_bits_are_still_read() -> None:
    assert response_json(httpx.Response(200, content=b'{"a": 18446744073709551616}')) == {
        "a": 2**64
    }


_BODY_BYTES = st.lists(
    st.sampled_from(
        [
            b"1",
            b"4",
            b"0",
            b" ",
            b"-",
            b"x",
            b'"',
            b"<",
            b">",
            b"/",
            b"_",
            b"number",
            b"Number",
            b"PAN",
            b"pan",
            b"card",
            b"CARD_",
            b"account-",
            b"primary_",
            b"4242424242424242",
            b"4242 4242 4242 4242",
            b"\xc3\xa9",
            b"\x00",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(_BODY_BYTES)
def test_card_number_pre_check_agrees_with_its_definition(body: bytes) -> None:
    expected = bool(_DIGIT_RUN_BYTES.search(body) or _PAN_KEY_BYTES.search(body))
    assert may_hold_card_number(body) is expected


@pytest.mark.parametrize(
    ("body", "held"),
    [
        (b'{"created":1761234567,"id":"ch_1"}', False),
        (b'{"card":"4242-4242-4242-4242"}', True),
        (b'{"CardNumber":"x"}', True),
        (b"<pan>x</pan>", True),
        (b'{"receipt_number":null}', False),
        (b'{"company":"span"}', False),
    ],
)
def test_card_number_pre_check_examples(body: bytes, held: bool) -> None:
    assert may_hold_card_number(body) is held


def test_time_ordered_ids_are_uuid7_in_creation_order_by_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [time_ordered_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    stamps = [i.int >> 80 for i in ids]
    assert before <= stamps[0]
    assert stamps[-1] <= after
    assert stamps == sorted(stamps)
    # Ids of different milliseconds sort (as PostgreSQL compares uuid) in creation order.
    later = [i for i in ids if i.int >> 80 > stamps[0]]
    assert all(i.bytes > ids[0].bytes for i in later)


@pytest.mark.parametrize(
    "text",
    [
        b'{"data": [{"id": -9223372036854775809}]}',
        b'{"data": [{"id": 18446744073709551616, "amount": 1.5}]}',
        b"[123456789012345678901234567890]",
        b"99999999999999999999",
    ],
)
def test_integers_beyond_64_bits_are_read_exactly(text: bytes) -> None:
    """orjson would read these as floats, dropping digits; the raw record must keep them."""
    assert response_json(httpx.Response(200, content=text)) == json.loads(text)
    assert json.dumps(response_json(httpx.Response(200, content=text))).encode().replace(
        b" ", b""
    ) == text.replace(b" ", b"")
