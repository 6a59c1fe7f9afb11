"""Payments list: fields, keyset pagination, filters and argument errors."""

from datetime import timedelta

import pytest

from app.clock import FixedClock
from app.db import Database
from app.enums import DeclineCategory, PaymentState, Processor, Role
from app.settings import Settings
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import PAYMENTS_PAGE, codes, run


async def test_payment_fields(db: Database, settings: Settings, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Fields", now=clock.now())
    [payment] = await make_payments(db, merchant, 1, now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    result = await run(
        db,
        settings,
        clock,
        PAYMENTS_PAGE,
        token=token,
        variables={"id": encode_id("Merchant", merchant.id)},
    )
    assert result.errors is None
    assert result.data is not None
    node = result.data["merchant"]["payments"]["edges"][0]["node"]
    assert node["id"] == encode_id("Payment", payment.id)
    assert node["amount"] == {"amountMinor": 1999, "currency": "EUR"}
    assert node["state"] == "SCHEDULED"
    assert node["decline"]["category"] == "INSUFFICIENT_FUNDS"
    assert [a["number"] for a in node["attempts"]] == [1, 2]
    assert node["attempts"][1]["actor"] == "PORTAL"
    # Attempts stored without their own card were made on the payment's.
    assert [a["card"] for a in node["attempts"]] == [{"last4": "0000"}] * 2
    assert node["card"] == {"brand": "visa", "last4": "0000", "funding": "DEBIT", "country": "FR"}


async def test_pages_have_no_duplicates_or_gaps(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Pages", now=clock.now())
    payments = await make_payments(db, merchant, 23, now=clock.now(), attempts_each=1)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        result = await run(
            db,
            settings,
            clock,
            PAYMENTS_PAGE,
            token=token,
            variables={"id": encode_id("Merchant", merchant.id), "first": 5, "after": after},
        )
        assert result.errors is None
        assert result.data is not None
        conn = result.data["merchant"]["payments"]
        seen += [e["node"]["id"] for e in conn["edges"]]
        pages += 1
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert pages == 5
    # Newest failure first: the factory made payment i fail i minutes before now.
    assert seen == [encode_id("Payment", p.id) for p in payments]


async def test_filters(db: Database, settings: Settings, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Filters", now=clock.now())
    await make_payments(db, merchant, 3, now=clock.now())
    await make_payments(
        db,
        merchant,
        2,
        now=clock.now() - timedelta(days=2),
        state=PaymentState.RECOVERED,
        processor=Processor.ADYEN,
        category=DeclineCategory.DO_NOT_HONOR,
    )
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    mid = encode_id("Merchant", merchant.id)

    async def count(filter_: dict[str, object]) -> int:
        result = await run(
            db,
            settings,
            clock,
            PAYMENTS_PAGE,
            token=token,
            variables={"id": mid, "filter": filter_},
        )
        assert result.errors is None
        assert result.data is not None
        return len(result.data["merchant"]["payments"]["edges"])

    assert await count({}) == 5
    assert await count({"states": ["RECOVERED"]}) == 2
    assert await count({"processors": ["ADYEN", "STRIPE"]}) == 5
    assert await count({"declineCategories": ["DO_NOT_HONOR"]}) == 2
    before = (clock.now() - timedelta(days=1)).isoformat()
    assert await count({"failedBefore": before}) == 2
    assert await count({"failedAfter": before}) == 3


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"after": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"after": "WzEsMl0"}, "INVALID_CURSOR"),
        ({"first": 0}, "INVALID_ARGUMENT"),
        ({"first": 101}, "INVALID_ARGUMENT"),
    ],
)
async def test_bad_arguments_get_typed_errors(
    db: Database, settings: Settings, clock: FixedClock, variables: dict[str, object], code: str
) -> None:
    merchant = await make_merchant(db, "Bad args", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    result = await run(
        db,
        settings,
        clock,
        PAYMENTS_PAGE,
        token=token,
        variables={"id": encode_id("Merchant", merchant.id), **variables},
    )
    assert codes(result) == [code]


async def test_malformed_node_id_is_a_typed_error(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Bad id", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    result = await run(db, settings, clock, PAYMENTS_PAGE, token=token, variables={"id": "garbage"})
    assert codes(result) == ["INVALID_ID"]
