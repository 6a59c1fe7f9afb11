"""Global ids and cursors: round trips and clear errors on anything malformed."""

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import InvalidCursor, InvalidId
from resolvers.ids import decode_cursor, decode_id, encode_cursor, encode_id


def test_id_round_trip() -> None:
    key = uuid.uuid4()
    assert decode_id(encode_id("Payment", key)) == ("Payment", key)
    assert decode_id(encode_id("Payment", key), expected="Payment") == ("Payment", key)
    with pytest.raises(InvalidId, match="not a Merchant id"):
        decode_id(encode_id("Payment", key), expected="Merchant")


def test_cursor_round_trip() -> None:
    at, key = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(at, key)) == (at, key)


@given(st.text(max_size=80))
def test_garbage_ids_raise_invalid_id(value: str) -> None:
    try:
        decode_id(value)
    except InvalidId:
        return
    # Only a well-formed id of a known type decodes.
    assert decode_id(value)[0] in {"Merchant", "Payment", "Customer", "Card"}


@given(st.text(max_size=80))
def test_garbage_cursors_raise_invalid_cursor(value: str) -> None:
    try:
        at, _ = decode_cursor(value)
    except InvalidCursor:
        return
    assert at.tzinfo is not None
