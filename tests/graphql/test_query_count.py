"""The payments page costs the same number of SQL statements for 1 row as for 50."""

from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import PAYMENTS_PAGE, count_payment_pages


async def test_statement_count_independent_of_page_size(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Counting", now=clock.now())
    await make_payments(db, merchant, 50, now=clock.now(), attempts_each=3)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    pages = await count_payment_pages(
        connection, db, settings, clock, PAYMENTS_PAGE, merchant_id=merchant.id, token=token
    )
    counts = {}
    for first, page in pages.items():
        assert len(page.edges) == first
        counts[first] = page.statements
    assert len(counts[1]) == len(counts[50])
    # key lookup + key grants + merchant + payments page + attempts + customers + cards
    assert len(counts[50]) == 7, "\n".join(s[:60] for s in counts[50])
