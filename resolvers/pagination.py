"""Keyset pages: argument checks and the page shape the schema turns into a connection."""

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from app.errors import InvalidArgument
from app.settings import Settings
from resolvers.ids import decode_cursor, encode_cursor

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """Rows of one page, each with its cursor, and whether more follow."""

    items: list[tuple[str, T]]
    has_next_page: bool

    @property
    def end_cursor(self) -> str | None:
        return self.items[-1][0] if self.items else None


def page_size(first: int | None, settings: Settings) -> int:
    size = settings.default_page_size if first is None else first
    if not 1 <= size <= settings.max_page_size:
        raise InvalidArgument(f"first must be 1-{settings.max_page_size}", field="first")
    return size


def after_key(after: str | None) -> tuple[datetime, uuid.UUID] | None:
    return None if after is None else decode_cursor(after)


def make_page(
    rows: Sequence[T], size: int, key: Callable[[T], tuple[datetime, uuid.UUID]]
) -> Page[T]:
    """`rows` holds up to size + 1 rows; the extra one only says another page follows."""
    return cursor_page(rows, size, lambda r: encode_cursor(*key(r)))


def cursor_page(rows: Sequence[T], size: int, cursor: Callable[[T], str]) -> Page[T]:
    """As `make_page`, each row's cursor made by `cursor`."""
    kept = list(rows[:size])
    return Page(items=[(cursor(r), r) for r in kept], has_next_page=len(rows) > size)
