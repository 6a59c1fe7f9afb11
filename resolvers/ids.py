"""Opaque global ids (`node(id:)`) and keyset cursors."""

import base64
import binascii
import json
import uuid
from collections.abc import Collection
from datetime import datetime

from app.errors import InvalidCursor, InvalidId


def _b64encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _b64decode(value: str) -> str:
    padded = value + "=" * (-len(value) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii")).decode()


def encode_id(type_name: str, key: uuid.UUID) -> str:
    return _b64encode(f"{type_name}:{key}")


def decode_id(
    value: str, *, expected: str | Collection[str] | None = None
) -> tuple[str, uuid.UUID]:
    """The (type, key) of a global id; raises InvalidId on anything malformed, or naming a type
    other than `expected` (one type, or any of several: `node(id:)` passes every node type)."""
    try:
        type_name, _, key = _b64decode(value).partition(":")
        parsed = uuid.UUID(key)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise InvalidId(f"malformed id {value[:64]!r}") from exc
    if isinstance(expected, str):
        if type_name != expected:
            raise InvalidId(f"id {value[:64]!r} is not a {expected} id")
    elif expected is not None and type_name not in expected:
        raise InvalidId(f"malformed id {value[:64]!r}")
    return type_name, parsed


def encode_cursor(at: datetime, key: uuid.UUID) -> str:
    return _b64encode(json.dumps([at.isoformat(), str(key)]))


def encode_event_cursor(position: int, at: datetime) -> str:
    """A feed cursor: the event's position, and when it occurred (to tell an expired one)."""
    return _b64encode(json.dumps(["event", position, at.isoformat()]))


def decode_event_cursor(value: str) -> tuple[int, datetime]:
    """The (position, time) of a feed cursor; raises InvalidCursor when malformed."""
    try:
        kind, position, at_raw = json.loads(_b64decode(value))
        at = datetime.fromisoformat(at_raw)
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise InvalidCursor(f"malformed cursor {value[:64]!r}") from exc
    if kind != "event" or type(position) is not int or position < 0 or at.tzinfo is None:
        raise InvalidCursor(f"malformed cursor {value[:64]!r}")
    return position, at


def decode_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) keyset position of a cursor; raises InvalidCursor when malformed."""
    try:
        at_raw, key_raw = json.loads(_b64decode(value))
        at = datetime.fromisoformat(at_raw)
        key = uuid.UUID(key_raw)
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise InvalidCursor(f"malformed cursor {value[:64]!r}") from exc
    if at.tzinfo is None:
        raise InvalidCursor(f"malformed cursor {value[:64]!r}")
    return at, key


def encode_sorted_cursor(order: str, value: str | int | None, key: uuid.UUID) -> str:
    """A cursor of a list in a chosen order: the order's name, the sort value, the id."""
    return _b64encode(json.dumps([order, value, str(key)]))


def decode_sorted_cursor(value: str) -> tuple[str | None, str | int | None, uuid.UUID]:
    """(order, sort value, id) of a cursor from `encode_sorted_cursor`; a (time, id) cursor
    from `encode_cursor` gives order None. Raises InvalidCursor when malformed."""
    try:
        parts = json.loads(_b64decode(value))
        if not isinstance(parts, list) or len(parts) not in (2, 3):
            raise ValueError("not a cursor")
        order = None if len(parts) == 2 else parts[0]
        sort_value, key = parts[-2], uuid.UUID(parts[-1])
        if order is not None and not isinstance(order, str):
            raise ValueError("not an order")
        if isinstance(sort_value, bool) or not isinstance(sort_value, str | int | None):
            raise ValueError("not a sort value")
    except (ValueError, TypeError, AttributeError, UnicodeError, binascii.Error) as exc:
        raise InvalidCursor(f"malformed cursor {value[:64]!r}") from exc
    return order, sort_value, key
