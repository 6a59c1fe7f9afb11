"""The payments page costs the same number of SQL statements for 1 row as for 50; by-id batches
reuse their statements."""

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import ORMExecuteState

from app.clock import FixedClock
from app.db import Database, ScopedSession
from app.enums import Role
from app.models.payment import Payment
from app.services.lookup import rows_by_ids
from app.services.payment import attempts_by_payment_ids
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Scope
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import PAYMENTS_PAGE, count_payment_pages, run, run_counted


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


async def test_nested_counts_are_one_statement(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    """totalCount of every merchant's payments and audit log, and of the merchants: a count
    statement for the merchants and one for each nested list, however many merchants."""
    merchants = [await make_merchant(db, f"Counted {i}", now=clock.now()) for i in range(4)]
    for merchant in merchants:
        await make_payments(db, merchant, 2, now=clock.now(), attempts_each=1)
    token = await make_key(db, Role.SUPPORT, [], now=clock.now())
    await run(db, settings, clock, "{ viewer { role } }", token=token)
    query = """query($first: Int) { merchants(first: $first) { totalCount isEstimate edges {
      node { payments(first: 1) { totalCount } auditLog(first: 1) { totalCount } } } } }"""
    counts = {}
    for first in (1, 4):
        data, statements = await run_counted(
            connection, db, settings, clock, query, token=token, variables={"first": first}
        )
        assert data["merchants"]["totalCount"] == 4
        assert data["merchants"]["isEstimate"] is False
        for edge in data["merchants"]["edges"]:
            assert edge["node"]["payments"] == {"totalCount": 2}
            assert edge["node"]["auditLog"] == {"totalCount": 1}
        counts[first] = statements
    for statements in counts.values():
        counting = [s for s in statements if "count(*)" in s]
        assert len(counting) == 3, "\n".join(s[:60] for s in statements)
        # The key lookup, the merchants page, one statement for every merchant's page of
        # payments, one for their audit entries, and the counts.
        assert len(statements) == 7, "\n".join(s[:60] for s in statements)


async def test_by_id_batches_reuse_one_statement_within_the_scope(
    db: Database, clock: FixedClock
) -> None:
    """Rows by id and attempts by payment are read with statements built once (their cache
    keys with them), the ids bound as one array; a merchant's scope still hides the rows of
    another merchant."""
    mine = await make_merchant(db, "Prebuilt A", now=clock.now())
    other = await make_merchant(db, "Prebuilt B", now=clock.now())
    [payment] = await make_payments(db, mine, 1, now=clock.now(), attempts_each=2)
    [foreign] = await make_payments(db, other, 1, now=clock.now(), attempts_each=1)
    executed: list[object] = []

    def record(state: ORMExecuteState) -> None:
        executed.append(state.statement)

    event.listen(ScopedSession, "do_orm_execute", record)
    try:
        async with db.session(SYSTEM_SCOPE) as session:
            for _ in range(2):
                found = await rows_by_ids(session, Payment, [payment.id, foreign.id])
                assert set(found) == {payment.id, foreign.id}
                attempts = await attempts_by_payment_ids(session, [payment.id, foreign.id])
                assert [a.number for a in attempts[payment.id]] == [1, 2]
                assert len(attempts[foreign.id]) == 1
    finally:
        event.remove(ScopedSession, "do_orm_execute", record)
    # Each statement the same object both times: nothing rebuilt per batch.
    assert len(executed) == 4
    assert executed[0] is executed[2]
    assert executed[1] is executed[3]
    async with db.session(Scope(frozenset({mine.id}))) as session:
        assert set(await rows_by_ids(session, Payment, [payment.id, foreign.id])) == {payment.id}
        attempts = await attempts_by_payment_ids(session, [payment.id, foreign.id])
        assert set(attempts) == {payment.id}
