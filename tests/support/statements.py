"""Counting the SQL statements code under test sends on the test's connection."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection


@contextmanager
def count_statements(connection: AsyncConnection) -> Iterator[list[str]]:
    """Every statement sent on `connection` inside the block, in order."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    sync = connection.sync_connection
    assert sync is not None
    event.listen(sync, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(sync, "before_cursor_execute", record)


def without_savepoints(statements: list[str]) -> list[str]:
    """The statements the code itself sent: SAVEPOINTs exist only because each test runs
    inside one transaction, where the code's commits become savepoints."""
    return [s for s in statements if "SAVEPOINT" not in s]
