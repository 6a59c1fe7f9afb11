"""Finding payments by what a merchant has in hand, and the filter's ranges and lists."""

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from app.clock import FixedClock
from app.db import Database
from app.enums import Actor, PaymentState, Role
from app.models.customer import CardCredential, Customer
from app.models.payment import Payment
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import codes, run

PAGE = """query($id: ID!, $filter: PaymentFilter) { merchant(id: $id) {
  payments(first: 50, filter: $filter) { edges { node { id } } } } }"""


async def _set(db: Database, payment: Payment, **values: Any) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment).where(col(Payment.id) == payment.id).values(**values)
        )
        await uow.commit()


async def _found(
    db: Database, settings: Settings, clock: FixedClock, token: str, mid: str, flt: dict[str, Any]
) -> list[str]:
    result = await run(db, settings, clock, PAGE, token=token, variables={"id": mid, "filter": flt})
    assert result.errors is None, result.errors
    assert result.data is not None
    return [e["node"]["id"] for e in result.data["merchant"]["payments"]["edges"]]


async def test_search_finds_a_payment_by_each_reference(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Search", now=clock.now())
    other = await make_merchant(db, "Search other", now=clock.now())
    payments = await make_payments(db, merchant, 4, now=clock.now())
    [foreign] = await make_payments(db, other, 1, now=clock.now())
    await _set(db, payments[1], invoice_ref="in_1234ABCD")
    async with db.session(SYSTEM_SCOPE) as s:
        customer = await s.get(Customer, payments[2].customer_id)
        card = await s.get(CardCredential, payments[3].card_id)
    assert customer is not None
    assert card is not None
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    mid = encode_id("Merchant", merchant.id)
    gid = [encode_id("Payment", p.id) for p in payments]

    async def search(term: str) -> list[str]:
        return await _found(db, settings, clock, token, mid, {"search": term})

    assert await search(payments[0].processor_payment_id) == [gid[0]]
    assert await search("in_1234ABCD") == [gid[1]]
    assert await search(f"  {customer.external_ref} ") == [gid[2]]
    assert await search(card.last4) == [gid[3]]
    # Exact matches only, and only within the merchant the key may see.
    assert await search(payments[0].processor_payment_id[:-2]) == []
    assert await search(foreign.processor_payment_id) == []


async def test_ranges_and_lists_narrow_the_page(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Ranges", now=clock.now())
    a, b, c = await make_payments(db, merchant, 3, now=clock.now())
    await _set(db, a, amount_minor=500, currency="USD")
    await _set(
        db,
        b,
        state=PaymentState.RECOVERED,
        recovered_by=Actor.CUSTOMER,
        recovered_at=clock.now(),
        next_retry_at=None,
    )
    await _set(db, c, next_retry_at=clock.now() + timedelta(days=5))
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    mid = encode_id("Merchant", merchant.id)
    ids = {p.id: encode_id("Payment", p.id) for p in (a, b, c)}

    async def found(flt: dict[str, Any]) -> set[str]:
        return set(await _found(db, settings, clock, token, mid, flt))

    assert await found({"currencies": ["USD"]}) == {ids[a.id]}
    assert await found({"currencies": ["EUR"], "amountMin": 2000}) == {ids[b.id], ids[c.id]}
    assert await found({"currencies": ["EUR"], "amountMin": 2001}) == {ids[c.id]}
    assert await found({"currencies": ["EUR"], "amountMax": 2000}) == {ids[b.id]}
    assert await found({"currencies": ["USD"], "amountMax": 500}) == {ids[a.id]}
    assert await found({"recoveredBy": ["CUSTOMER"]}) == {ids[b.id]}
    assert await found({"recoveredBy": ["PORTAL"]}) == set()
    later = (clock.now() + timedelta(days=2)).isoformat()
    assert await found({"nextRetryAfter": later}) == {ids[c.id]}
    assert await found({"nextRetryBefore": later}) == {ids[a.id]}


@pytest.mark.parametrize(
    ("flt", "field"),
    [
        ({"amountMin": 100}, "filter.amountMin"),
        ({"amountMax": 100, "currencies": ["EUR", "USD"]}, "filter.amountMax"),
        ({"amountMin": -1, "currencies": ["EUR"]}, "filter.amountMin"),
        ({"currencies": ["eur"]}, "filter.currencies"),
        ({"search": "   "}, "filter.search"),
        ({"search": "x" * 256}, "filter.search"),
    ],
)
async def test_a_filter_that_cannot_apply_is_a_typed_error(
    db: Database, settings: Settings, clock: FixedClock, flt: dict[str, Any], field: str
) -> None:
    merchant = await make_merchant(db, "Bad filter", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    result = await run(
        db,
        settings,
        clock,
        PAGE,
        token=token,
        variables={"id": encode_id("Merchant", merchant.id), "filter": flt},
    )
    assert codes(result) == ["INVALID_ARGUMENT"]
    assert result.errors is not None
    assert (result.errors[0].extensions or {}).get("field") == field


async def test_several_states_page_newest_first_without_gaps(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "States pages", now=clock.now())
    payments = await make_payments(db, merchant, 9, now=clock.now(), attempts_each=1)
    states = [PaymentState.SCHEDULED, PaymentState.RECOVERED, PaymentState.EXHAUSTED]
    for i, payment in enumerate(payments):
        await _set(db, payment, state=states[i % 3])
    # Newest failure first: the factory's payments failed a minute apart, the first newest.
    wanted = [encode_id("Payment", p.id) for i, p in enumerate(payments) if i % 3 != 2]
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    seen: list[str] = []
    after = None
    while True:
        result = await run(
            db,
            settings,
            clock,
            """query($id: ID!, $after: String) { merchant(id: $id) {
              payments(first: 2, after: $after, filter: {states: [RECOVERED, SCHEDULED]}) {
                edges { node { id } } pageInfo { hasNextPage endCursor } } } }""",
            token=token,
            variables={"id": encode_id("Merchant", merchant.id), "after": after},
        )
        assert result.errors is None, result.errors
        assert result.data is not None
        page = result.data["merchant"]["payments"]
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == wanted
