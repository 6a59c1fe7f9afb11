"""The payments page costs the same number of SQL statements for 1 row as for 50."""

from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import PAYMENTS_PAGE, run, run_counted


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
        data, counts[first] = await run_counted(
            connection,
            db,
            settings,
            clock,
            PAYMENTS_PAGE,
            token=token,
            variables={"id": encode_id("Merchant", merchant.id), "first": first},
        )
        assert len(data["merchant"]["payments"]["edges"]) == first
    assert len(counts[1]) == len(counts[50])
    # key lookup + key grants + merchant + payments page + attempts + customers + cards
    assert len(counts[50]) == 7, "\n".join(s[:60] for s in counts[50])
