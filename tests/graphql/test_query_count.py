"""The payments page costs the same number of SQL statements for 1 row as for 50."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from resolvers.ids import encode_id
from tests.graphql.test_payment import PAGE
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import run


@contextmanager
def count_statements(connection: AsyncConnection) -> Iterator[list[str]]:
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


async def test_statement_count_independent_of_page_size(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Counting", now=clock.now())
    await make_payments(db, merchant, 50, now=clock.now(), attempts_each=3)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    # Authenticate once first so last_used_at is fresh and later requests are read-only.
    await run(db, settings, clock, "{ viewer { role } }", token=token)

    counts = {}
    for first in (1, 50):
        with count_statements(connection) as statements:
            result = await run(
                db,
                settings,
                clock,
                PAGE,
                token=token,
                variables={"id": encode_id("Merchant", merchant.id), "first": first},
            )
        assert result.errors is None
        assert result.data is not None
        assert len(result.data["merchant"]["payments"]["edges"]) == first
        # Savepoint statements exist only because tests run inside one transaction.
        counts[first] = [s for s in statements if "SAVEPOINT" not in s]
    assert len(counts[1]) == len(counts[50])
    # key lookup + key grants + merchant + payments page + attempts + customers + cards
    assert len(counts[50]) == 7, "\n".join(s[:60] for s in counts[50])
