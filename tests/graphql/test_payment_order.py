"""The payments list's orders: keyset pages in every order, ties and nulls included, the same
as sorting in Python; cursors tied to their order; totalCount."""

import uuid
from datetime import datetime, timedelta
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlmodel import col

from app.clock import FixedClock
from app.db import Database
from app.enums import Actor, PaymentState, Role
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services.counting import bounded_counts
from app.services.payment import PaymentFilter, payment_count_query
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Scope
from resolvers.counts import CountOf, Listing, count_query
from resolvers.ids import encode_cursor, encode_id, encode_sorted_cursor
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import codes, run, run_data

PAGE = """query($id: ID!, $first: Int, $after: String, $order: PaymentOrder,
                $filter: PaymentFilter) {
  merchant(id: $id) { payments(first: $first, after: $after, orderBy: $order, filter: $filter) {
    totalCount isEstimate
    edges { cursor node { id failedAt nextRetryAt recoveredAt amount { amountMinor } } }
    pageInfo { hasNextPage endCursor } } } }"""

FIELDS = {
    "FAILED_AT": "first_failed_at",
    "NEXT_RETRY_AT": "next_retry_at",
    "AMOUNT": "amount_minor",
    "RECOVERED_AT": "recovered_at",
}


def expected(rows: list[dict[str, Any]], field: str, direction: str) -> list[uuid.UUID]:
    """The order the API promises: payments with a value by (value, id), then the others by
    id, both in the direction asked for."""
    column = FIELDS[field]
    descending = direction == "DESC"
    valued = sorted(
        (r for r in rows if r[column] is not None),
        key=lambda r: (r[column], r["id"]),
        reverse=descending,
    )
    nulls = sorted(
        (r for r in rows if r[column] is None), key=lambda r: r["id"], reverse=descending
    )
    return [r["id"] for r in valued + nulls]


async def _seed(
    db: Database, merchant: Merchant, now: datetime, values: list[tuple[int, Any, int, Any]]
) -> list[dict[str, Any]]:
    """Payments whose failure time, next retry, amount and recovery time are given (in
    minutes from `now`, None for none): few distinct values, so ties are common."""
    payments = await make_payments(db, merchant, len(values), now=now, attempts_each=1)
    rows = []
    async with db.uow(SYSTEM_SCOPE) as uow:
        for payment, (failed, retry, amount, recovered) in zip(payments, values, strict=True):
            row = {
                "id": payment.id,
                "first_failed_at": now - timedelta(minutes=failed),
                "next_retry_at": None if retry is None else now + timedelta(minutes=retry),
                "amount_minor": amount,
                "recovered_at": None if recovered is None else now + timedelta(minutes=recovered),
            }
            state = PaymentState.RECOVERED if recovered is not None else PaymentState.SCHEDULED
            values_ = {k: v for k, v in row.items() if k != "id"}
            await uow.session.execute(
                update(Payment).where(col(Payment.id) == payment.id).values(state=state, **values_)
            )
            rows.append(row)
        await uow.commit()
    return rows


async def _walk(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    token: str,
    merchant: Merchant,
    order: dict[str, str],
    size: int,
) -> tuple[list[str], int]:
    found: list[str] = []
    after = None
    total = -1
    for _ in range(100):
        data = await run_data(
            db,
            settings,
            clock,
            PAGE,
            token,
            id=encode_id("Merchant", merchant.id),
            first=size,
            after=after,
            order=order,
            filter={"currencies": ["EUR"]},
        )
        payments = data["merchant"]["payments"]
        total = payments["totalCount"]
        assert payments["isEstimate"] is False
        found += [e["node"]["id"] for e in payments["edges"]]
        if not payments["pageInfo"]["hasNextPage"]:
            return found, total
        after = payments["pageInfo"]["endCursor"]
    raise AssertionError("paging did not end")


values = st.tuples(
    st.integers(0, 2),
    st.one_of(st.none(), st.integers(0, 2)),
    st.sampled_from([100, 200, 300]),
    st.one_of(st.none(), st.integers(0, 1)),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(values, min_size=0, max_size=9),
    field=st.sampled_from(sorted(FIELDS)),
    direction=st.sampled_from(["ASC", "DESC"]),
    size=st.integers(1, 4),
)
async def test_every_order_pages_as_python_sorts(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    rows: list[tuple[int, Any, int, Any]],
    field: str,
    direction: str,
    size: int,
) -> None:
    merchant = await make_merchant(db, f"Order {uuid.uuid4().hex[:8]}", now=clock.now())
    seeded = await _seed(db, merchant, clock.now(), rows)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    order = {"field": field, "direction": direction}
    found, total = await _walk(db, settings, clock, token, merchant, order, size)
    assert found == [encode_id("Payment", i) for i in expected(seeded, field, direction)]
    assert total == len(seeded)


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("direction", ["ASC", "DESC"])
async def test_ties_and_nulls_across_pages(
    db: Database, settings: Settings, clock: FixedClock, field: str, direction: str
) -> None:
    """Every value tied, half of them null: each page boundary falls inside a tie, and one
    between the payments with a value and those without."""
    merchant = await make_merchant(db, "Ties", now=clock.now())
    rows = [(1, None if i % 2 else 1, 500, None if i % 2 else 0) for i in range(7)]
    seeded = await _seed(db, merchant, clock.now(), rows)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    order = {"field": field, "direction": direction}
    for size in (1, 2, 3):
        found, total = await _walk(db, settings, clock, token, merchant, order, size)
        assert found == [encode_id("Payment", i) for i in expected(seeded, field, direction)]
        assert total == 7


async def test_several_states_merge_in_every_order(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "States", now=clock.now())
    rows = [(i % 3, None, 100 * (i % 2), 0 if i % 2 else None) for i in range(6)]
    seeded = await _seed(db, merchant, clock.now(), rows)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    for direction in ("ASC", "DESC"):
        found = []
        after = None
        while True:
            data = await run_data(
                db,
                settings,
                clock,
                PAGE,
                token,
                id=encode_id("Merchant", merchant.id),
                first=2,
                after=after,
                order={"field": "FAILED_AT", "direction": direction},
                filter={"states": ["SCHEDULED", "RECOVERED"]},
            )
            payments = data["merchant"]["payments"]
            found += [e["node"]["id"] for e in payments["edges"]]
            if not payments["pageInfo"]["hasNextPage"]:
                break
            after = payments["pageInfo"]["endCursor"]
        ids = expected(seeded, "FAILED_AT", direction)
        assert found == [encode_id("Payment", i) for i in ids]


async def test_cursors_belong_to_their_order(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Cursors", now=clock.now())
    payments = await make_payments(db, merchant, 3, now=clock.now(), attempts_each=1)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    mid = encode_id("Merchant", merchant.id)

    async def page(order: dict[str, str] | None, after: str | None) -> Any:
        variables = {"id": mid, "first": 1, "after": after, "order": order}
        return await run(db, settings, clock, PAGE, token=token, variables=variables)

    by_retry = {"field": "NEXT_RETRY_AT", "direction": "ASC"}
    first = await page(by_retry, None)
    cursor = first.data["merchant"]["payments"]["pageInfo"]["endCursor"]
    refused = await page(None, cursor)
    assert codes(refused) == ["INVALID_ARGUMENT"]
    assert refused.errors is not None
    assert refused.errors[0].extensions["field"] == "after"
    assert codes(await page({"field": "NEXT_RETRY_AT", "direction": "DESC"}, cursor)) == [
        "INVALID_ARGUMENT"
    ]
    # A cursor of the default order, as handed out before orders existed, still pages it.
    old = encode_cursor(payments[0].first_failed_at, payments[0].id)
    following = await page({"field": "FAILED_AT", "direction": "DESC"}, old)
    assert following.errors is None
    edges = following.data["merchant"]["payments"]["edges"]
    assert [e["node"]["id"] for e in edges] == [encode_id("Payment", payments[1].id)]
    # A made-up sort value of the wrong kind, or null where the order has no nulls.
    key = payments[0].id
    for bad, field in (
        (encode_sorted_cursor("AMOUNT:ASC", "2026", key), "AMOUNT"),
        (encode_sorted_cursor("FAILED_AT:ASC", None, key), "FAILED_AT"),
        (encode_sorted_cursor("NEXT_RETRY_AT:ASC", "yesterday", key), "NEXT_RETRY_AT"),
        ("bm90IGEgY3Vyc29y", "FAILED_AT"),
    ):
        variables = {
            "id": mid,
            "after": bad,
            "order": {"field": field, "direction": "ASC"},
            "filter": {"currencies": ["EUR"]},
        }
        result = await run(db, settings, clock, PAGE, token=token, variables=variables)
        assert codes(result) == ["INVALID_CURSOR"], bad


async def test_amount_order_needs_one_currency(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Amounts", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    for flt in (None, {"currencies": ["EUR", "USD"]}):
        result = await run(
            db,
            settings,
            clock,
            PAGE,
            token=token,
            variables={
                "id": encode_id("Merchant", merchant.id),
                "order": {"field": "AMOUNT"},
                "filter": flt,
            },
        )
        assert codes(result) == ["INVALID_ARGUMENT"]
        assert result.errors is not None
        assert result.errors[0].extensions["field"] == "orderBy.field"  # type: ignore[index]


async def test_counts_beyond_the_limit_are_estimates(db: Database, clock: FixedClock) -> None:
    """Exact up to the limit; beyond it, the planner's estimate (at least limit + 1), marked as
    such, each list on its own in one statement."""
    big = await make_merchant(db, "Big", now=clock.now())
    small = await make_merchant(db, "Small", now=clock.now())
    await make_payments(db, big, 6, now=clock.now(), attempts_each=1)
    await make_payments(db, small, 2, now=clock.now(), attempts_each=1)
    everything = PaymentFilter()
    queries = [
        payment_count_query("merchant", big.id, everything, None),
        payment_count_query("merchant", small.id, everything, None),
        payment_count_query("viewer", None, everything, frozenset({small.id})),
        payment_count_query("merchant", big.id, PaymentFilter(currencies=("EUR",)), None),
    ]
    async with db.session(SYSTEM_SCOPE) as session:
        counts = await bounded_counts(session, queries, limit=3)
        exact = await bounded_counts(session, queries, limit=100)
    assert [c.value for c in exact] == [6, 2, 2, 6]
    assert not any(c.estimate for c in exact)
    assert [c.estimate for c in counts] == [True, False, False, True]
    assert counts[0].value >= 4
    assert counts[3].value >= 4
    assert [c.value for c in counts[1:3]] == [2, 2]


async def test_total_count_follows_the_filter_and_is_read_only_when_asked(
    db: Database, settings: Settings, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    merchant = await make_merchant(db, "Counted", now=clock.now())
    await make_payments(db, merchant, 3, now=clock.now(), attempts_each=1)
    await make_payments(
        db, merchant, 2, now=clock.now(), attempts_each=1, state=PaymentState.EXHAUSTED
    )
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    mid = encode_id("Merchant", merchant.id)
    query = """query($id: ID!, $filter: PaymentFilter) { merchant(id: $id) {
      payments(first: 1, filter: $filter) { totalCount isEstimate } } }"""
    for flt, total in ((None, 5), ({"states": ["EXHAUSTED"]}, 2), ({"search": "nothing"}, 0)):
        data = await run_data(db, settings, clock, query, token, id=mid, filter=flt)
        assert data["merchant"]["payments"] == {"totalCount": total, "isEstimate": False}
    monkeypatch.setattr("resolvers.counts.COUNT_LIMIT", 2)
    data = await run_data(db, settings, clock, query, token, id=mid, filter=None)
    assert data["merchant"]["payments"]["isEstimate"] is True
    assert data["merchant"]["payments"]["totalCount"] >= 3


async def test_every_count_query_has_an_estimate(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    """The estimate's EXPLAIN is sent as text: every list's count query, with every kind of
    filter value (times, states, amounts, search), renders and is estimated."""
    merchant = await make_merchant(db, "Estimated", now=clock.now())
    await make_payments(db, merchant, 2, now=clock.now(), attempts_each=1)
    await make_key(db, Role.PARTNER, [merchant], now=clock.now())
    scope = Scope(merchant_ids=frozenset({merchant.id}))
    filters = PaymentFilter(
        states=(PaymentState.SCHEDULED, PaymentState.RETRYING),
        currencies=("EUR",),
        recovered_by=(Actor.PORTAL,),
        failed_after=clock.now() - timedelta(days=1),
        next_retry_before=clock.now() + timedelta(days=3),
        amount_min=1,
        search="1234",
    )
    keys = [
        CountOf("merchant_payments", merchant.id, filters),
        CountOf("customer_payments", uuid.uuid4(), filters),
        CountOf("viewer_payments", None, filters),
        CountOf("viewer_payments", None, PaymentFilter(search="ch_x'; --")),
        # What a bind parameter or a format would read in a text statement: sent as it is.
        CountOf("merchant_payments", merchant.id, PaymentFilter(search="INV :2026 %s %(x)s")),
        CountOf("merchants"),
        CountOf("api_keys"),
        CountOf("audit_log", merchant.id),
        CountOf("policy_history", merchant.id),
        CountOf("raw_records", uuid.uuid4(), since=clock.now(), unnormalized_only=True),
        CountOf("dead_letters", uuid.uuid4()),
        CountOf("events", merchant.id, types=("payment.recovered", "x'; --")),
    ]
    assert {k.listing for k in keys} == set(get_args(Listing)), "count every kind of list"
    async with db.session(scope) as session:
        counts = await bounded_counts(session, [count_query(k, scope) for k in keys], limit=-1)
    assert all(c.estimate and c.value >= 0 for c in counts)


@pytest.mark.parametrize("literal", ['""', '"12x"', "true", "1.5", str(2**63)])
async def test_a_bad_long_literal_is_the_clients_error(
    db: Database, settings: Settings, clock: FixedClock, literal: str
) -> None:
    merchant = await make_merchant(db, "Long", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    flt = '{currencies: ["EUR"], amountMax: ' + literal + "}"
    query = "{ viewer { payments(filter: " + flt + ") { totalCount } } }"
    result = await run(db, settings, clock, query, token=token)
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]
