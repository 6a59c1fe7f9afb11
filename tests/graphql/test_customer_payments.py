"""Customer.payments: a customer's own payments, paged, and every customer of a request read
in one statement."""

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.models.payment import Payment
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import run, run_counted, run_data

CUSTOMER = """query($id: ID!, $after: String) { node(id: $id) { ... on Customer {
  payments(first: 2, after: $after, orderBy: {field: AMOUNT, direction: DESC},
           filter: {currencies: ["EUR"]}) {
    totalCount edges { node { id amount { amountMinor } } } pageInfo { hasNextPage endCursor }
  } } } }"""

NESTED = """query($id: ID!, $first: Int) { merchant(id: $id) {
  payments(first: $first) { totalCount edges { node { id customer {
    payments(first: 3) { totalCount edges { node { id card { last4 } } } } } } } } } }"""


async def test_a_customer_lists_its_own_payments(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Customers", now=clock.now())
    payments = await make_payments(db, merchant, 5, now=clock.now(), attempts_each=1)
    customer_id = payments[0].customer_id
    # Three payments of one customer, two of others.
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment)
            .where(col(Payment.id).in_([p.id for p in payments[1:3]]))
            .values(customer_id=customer_id)
        )
        await uow.commit()
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    found: list[str] = []
    after = None
    while True:
        data = await run_data(
            db, settings, clock, CUSTOMER, token, id=encode_id("Customer", customer_id), after=after
        )
        page = data["node"]["payments"]
        assert page["totalCount"] == 3
        found += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    # make_payments gives the i-th payment 1999 + i minor units: largest first.
    assert found == [encode_id("Payment", p.id) for p in reversed(payments[:3])]


async def test_nested_customer_payments_are_one_statement(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    """A page of 1 payment and of 30, each with its customer's payments and their counts:
    the same statements, one for every customer's page and one for their counts."""
    merchant = await make_merchant(db, "Nested", now=clock.now())
    await make_payments(db, merchant, 30, now=clock.now(), attempts_each=1)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    await run(db, settings, clock, "{ viewer { role } }", token=token)
    counts = {}
    for first in (1, 30):
        data, statements = await run_counted(
            connection,
            db,
            settings,
            clock,
            NESTED,
            token=token,
            variables={"id": encode_id("Merchant", merchant.id), "first": first},
        )
        edges = data["merchant"]["payments"]["edges"]
        assert len(edges) == first
        for edge in edges:
            inner = edge["node"]["customer"]["payments"]
            assert inner["totalCount"] == 1
            assert [e["node"]["id"] for e in inner["edges"]] == [edge["node"]["id"]]
        counts[first] = statements
    assert len(counts[1]) == len(counts[30]), "\n".join(s[:80] for s in counts[30])
    # key + grants + merchant + page + its count + customers + customers' payments + their
    # counts + cards: a count statement per level of nesting, whatever the number of parents
    assert len(counts[30]) == 9, "\n".join(s[:80] for s in counts[30])
