"""Rollups kept by triggers equal a recomputation from payments, whatever the writes."""

import importlib.util
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import col

from app.db import Database
from app.enums import (
    Actor,
    Advice,
    CardFunding,
    DeclineCategory,
    PaymentState,
    Processor,
    RetryStrategy,
)
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.retry_policy import RetryPolicy
from app.models.stats import BUCKET_SECONDS, MEASURES, TTR_EDGES_SECONDS
from app.retry.schedule import in_control_group
from app.services.retry_policy import current_policies, snapshot
from app.services.stats.figures import RollupKey
from app.services.stats.query import Granularity, stats_query
from app.services.stats.recompute import (
    RollupDifference,
    recompute,
    rollup_differences,
    ttr_bucket,
)
from app.services.stats.rollups import load_stats
from app.tenancy import SYSTEM_SCOPE
from tests.support.factories import make_merchant

BASE = datetime(2026, 10, 1, tzinfo=UTC)
MIGRATION = Path(__file__).parents[2] / "migrations" / "versions" / "0005_recovery_rollups.py"


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rollup_migration", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_copies_match_the_code() -> None:
    migration = _migration()
    assert tuple(h * 3600 for h in migration.TTR_EDGES_HOURS) == TTR_EDGES_SECONDS
    assert migration.MEASURES == MEASURES
    assert BUCKET_SECONDS == 15 * 60  # the migration's date_bin('15 minutes', …)


async def test_sql_control_group_and_histogram_match_python(db: Database) -> None:
    pairs = [(uuid.uuid4(), uuid.uuid4()) for _ in range(2000)]
    seconds = [0.0, 1.0, *(float(e) for e in TTR_EDGES_SECONDS)]
    seconds += [e - 0.5 for e in TTR_EDGES_SECONDS] + [1e9]
    async with db.session(SYSTEM_SCOPE) as session:
        rows = (
            await session.execute(
                sa.text(
                    "SELECT recovery_control_group(m, p) FROM unnest(CAST(:m AS uuid[]), "
                    "CAST(:p AS uuid[])) WITH ORDINALITY AS u(m, p, i) ORDER BY i"
                ),
                {"m": [m for m, _ in pairs], "p": [p for _, p in pairs]},
            )
        ).scalars()
        in_sql = list(rows)
        buckets = list(
            (
                await session.execute(
                    sa.text(
                        "SELECT recovery_ttr_bucket(s) FROM unnest(CAST(:s AS float8[])) "
                        "WITH ORDINALITY AS u(s, i) ORDER BY i"
                    ),
                    {"s": seconds},
                )
            ).scalars()
        )
    assert in_sql == [in_control_group(str(m), str(p)) for m, p in pairs]
    assert 100 < sum(in_sql) < 320  # about 10%
    assert buckets == [ttr_bucket(s) for s in seconds]


# Random write sequences: every operation is one SQL statement, as the triggers see them.

payment_values = st.fixed_dictionaries(
    {
        "merchant": st.integers(0, 1),
        "currency": st.sampled_from(["EUR", "USD", "JPY"]),
        "processor": st.sampled_from([Processor.STRIPE, Processor.ADYEN]),
        "category": st.sampled_from(
            [DeclineCategory.INSUFFICIENT_FUNDS, DeclineCategory.CARD_EXPIRED]
        ),
        "retryable": st.booleans(),
        "amount": st.integers(0, 10**12),
        "minutes": st.integers(0, 60 * 24 * 10),
        "card": st.sampled_from([None, 0, 1, 2]),
    }
)
changes = st.one_of(
    st.fixed_dictionaries(
        {
            "state": st.just(PaymentState.RECOVERED),
            "recovered_by": st.sampled_from(list(Actor)),
            "recovered_after_minutes": st.integers(-30, 60 * 24 * 100),
            "attempt_count": st.integers(1, 12),
        }
    ),
    st.fixed_dictionaries(
        {"state": st.sampled_from([PaymentState.EXHAUSTED, PaymentState.SCHEDULED])}
    ),
    st.fixed_dictionaries(
        {"decision_strategy": st.sampled_from([RetryStrategy.MODEL, RetryStrategy.FIXED_SCHEDULE])}
    ),
    st.fixed_dictionaries({"card": st.sampled_from([None, 0, 1, 2])}),
    st.fixed_dictionaries({"minutes": st.integers(0, 60 * 24 * 10)}),
    st.fixed_dictionaries({"amount": st.integers(0, 10**6), "retryable": st.booleans()}),
    st.fixed_dictionaries({"next_retry_at_minutes": st.integers(0, 100)}),  # no rollup change
    # Decided under policy version 1 (10% control), 2 (50%), 3 (none), or not yet decided.
    st.fixed_dictionaries({"policy_version": st.sampled_from([None, 1, 2, 3])}),
)
# The control share of each merchant's policy versions after the first (10%, the default).
LATER_POLICY_PERCENTS = (50, 0)
# Each merchant's zone from policy version 2: the first one's day rollups serve the queries in
# America/New_York, the second one's read quarter hours there.
MERCHANT_ZONES = ("America/New_York", "UTC")
operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.lists(payment_values, min_size=1, max_size=4)),
        st.tuples(st.just("update"), st.lists(st.integers(0, 20), max_size=4), changes),
        st.tuples(st.just("funding"), st.integers(0, 2), st.sampled_from(list(CardFunding))),
        st.tuples(st.just("delete"), st.integers(0, 20)),
    ),
    min_size=1,
    max_size=8,
)


async def _world(db: Database) -> tuple[list[Merchant], list[Customer], list[list[CardCredential]]]:
    merchants = [await make_merchant(db, f"Rollup {i}", now=BASE) for i in range(2)]
    customers: list[Customer] = []
    cards: list[list[CardCredential]] = []
    async with db.uow(SYSTEM_SCOPE) as uow:
        for merchant in merchants:
            first = (await current_policies(uow.session, [merchant.id]))[merchant.id]
            for version, percent in enumerate(LATER_POLICY_PERCENTS, start=2):
                values = {
                    **snapshot(first),
                    "version": version,
                    "control_group_percent": percent,
                    "timezone": MERCHANT_ZONES[len(customers)],
                }
                uow.session.add(
                    RetryPolicy(
                        merchant_id=merchant.id, created_at=BASE, created_by="test", **values
                    )
                )
            customer = Customer(
                merchant_id=merchant.id, external_ref=uuid.uuid4().hex, created_at=BASE
            )
            uow.session.add(customer)
            await uow.session.flush()
            customers.append(customer)
            row = []
            for i, funding in enumerate(
                (CardFunding.CREDIT, CardFunding.DEBIT, CardFunding.PREPAID)
            ):
                card = CardCredential(
                    merchant_id=merchant.id,
                    customer_id=customer.id,
                    brand="visa",
                    funding=funding,
                    last4=f"000{i}",
                    exp_month=1,
                    exp_year=2030,
                    fingerprint=uuid.uuid4().hex,
                    created_at=BASE,
                )
                uow.session.add(card)
                row.append(card)
            await uow.session.flush()
            cards.append(row)
        await uow.commit()
    return merchants, customers, cards


async def _apply(
    db: Database,
    ops: list[tuple[Any, ...]],
    merchants: list[Merchant],
    customers: list[Customer],
    cards: list[list[CardCredential]],
) -> None:
    created: list[tuple[uuid.UUID, int]] = []  # (payment id, merchant index)
    for op in ops:
        async with db.uow(SYSTEM_SCOPE) as uow:
            s = uow.session
            if op[0] == "insert":
                rows = []
                for v in op[1]:
                    m = v["merchant"]
                    pid = uuid.uuid4()
                    created.append((pid, m))
                    rows.append(
                        {
                            "id": pid,
                            "merchant_id": merchants[m].id,
                            "processor": v["processor"],
                            "processor_payment_id": pid.hex,
                            "amount_minor": v["amount"],
                            "currency": v["currency"],
                            "customer_id": customers[m].id,
                            "card_id": None if v["card"] is None else cards[m][v["card"]].id,
                            "first_failed_at": BASE + timedelta(minutes=v["minutes"]),
                            "decline_category": v["category"],
                            "decline_retryable": v["retryable"],
                            "decline_advice": Advice.RETRY,
                            "attempt_count": 1,
                            "created_at": BASE,
                            "updated_at": BASE,
                        }
                    )
                await s.execute(sa.insert(Payment), rows)
            elif op[0] == "update" and created:
                targets = sorted({created[i % len(created)] for i in op[1]})
                for m in (0, 1):
                    ids = [pid for pid, pm in targets if pm == m]
                    if ids:
                        await s.execute(
                            sa.update(Payment)
                            .where(col(Payment.id).in_(ids))
                            .values(**_values(op[2], cards[m]))
                        )
            elif op[0] == "funding":
                await s.execute(
                    sa.update(CardCredential)
                    .where(col(CardCredential.id).in_([row[op[1]].id for row in cards]))
                    .values(funding=op[2])
                )
            elif op[0] == "delete" and created:
                pid, _ = created.pop(op[1] % len(created))
                await s.execute(sa.delete(Payment).where(col(Payment.id) == pid))
            await uow.commit()


def _values(change: dict[str, Any], cards: list[CardCredential]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in change.items():
        if name == "recovered_after_minutes":
            values["recovered_at"] = sa.literal_column("first_failed_at") + timedelta(minutes=value)
        elif name == "card":
            values["card_id"] = None if value is None else cards[value].id
        elif name == "minutes":
            values["first_failed_at"] = BASE + timedelta(minutes=value)
        elif name == "amount":
            values["amount_minor"] = value
        elif name == "retryable":
            values["decline_retryable"] = value
        elif name == "next_retry_at_minutes":
            values["next_retry_at"] = BASE + timedelta(minutes=value)
        else:
            values[name] = value
    return values


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, granularity=st.sampled_from(list(Granularity)))
async def test_rollups_equal_recomputation_after_random_writes(
    db: Database, ops: list[tuple[Any, ...]], granularity: Granularity
) -> None:
    merchants, customers, cards = await _world(db)
    await _apply(db, ops, merchants, customers, cards)
    ids = [m.id for m in merchants]
    query = stats_query(
        BASE + timedelta(days=2), BASE + timedelta(days=9), granularity, "America/New_York"
    )
    async with db.session(SYSTEM_SCOPE) as session:
        assert await rollup_differences(session, ids) == []
        for per_merchant in (False, True):
            served = await load_stats(session, query, merchant_ids=ids, per_merchant=per_merchant)
            expected = await recompute(session, query, merchant_ids=ids, per_merchant=per_merchant)
            assert served == expected


async def test_backfill_equals_recomputation(db: Database) -> None:
    """The migration's backfill statement, run again over existing payments, adds exactly
    what the triggers already hold (so a fresh table filled by it would be equal)."""
    merchants, customers, cards = await _world(db)
    ops: list[tuple[Any, ...]] = [
        ("insert", [{"merchant": i % 2, "currency": "EUR", "processor": Processor.STRIPE,
                     "category": DeclineCategory.INSUFFICIENT_FUNDS, "retryable": True,
                     "amount": 100 * i, "minutes": 37 * i, "card": i % 3} for i in range(6)]),
        ("update", [0, 1], {"state": PaymentState.RECOVERED, "recovered_by": Actor.CUSTOMER,
                            "recovered_after_minutes": 90, "attempt_count": 3}),
    ]  # fmt: skip
    await _apply(db, ops, merchants, customers, cards)
    migration = _migration()
    ids = [m.id for m in merchants]
    backfill = migration._apply(
        migration._contributions(migration.PAYMENT_NEW.replace("new_rows", "payment"), 1)
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        before = await rollup_differences(uow.session, ids)
        await uow.session.execute(sa.text("DELETE FROM recovery_rollup"))
        await uow.session.execute(sa.text(backfill))
        after = await rollup_differences(uow.session, ids)
    assert before == []
    assert after == []


async def test_a_check_reports_a_tampered_row(db: Database) -> None:
    merchants, customers, cards = await _world(db)
    await _apply(
        db,
        [("insert", [{"merchant": 0, "currency": "USD", "processor": Processor.STRIPE,
                      "category": DeclineCategory.CARD_EXPIRED, "retryable": False,
                      "amount": 500, "minutes": 5, "card": None}])],
        merchants, customers, cards,
    )  # fmt: skip
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            sa.text(
                "UPDATE recovery_rollup SET failed_amount = failed_amount + 1 "
                "WHERE merchant_id = :m"
            ),
            {"m": merchants[0].id},
        )
        [difference] = await rollup_differences(uow.session, [merchants[0].id])
    assert isinstance(difference, RollupDifference)
    assert isinstance(difference.key, RollupKey)
    assert difference.stored is not None
    assert difference.expected is not None
    assert difference.stored.failed_amount == difference.expected.failed_amount + 1 == 501
    assert difference.key.funding == "unknown"


async def test_the_control_arm_follows_the_share_of_the_deciding_policy_version(
    db: Database,
) -> None:
    merchants, customers, _ = await _world(db)
    merchant, customer = merchants[0], customers[0]
    ids = [uuid.uuid4() for _ in range(200)]
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            sa.insert(Payment),
            [
                {
                    "id": pid,
                    "merchant_id": merchant.id,
                    "processor": Processor.STRIPE,
                    "processor_payment_id": pid.hex,
                    "amount_minor": 100,
                    "currency": "EUR",
                    "customer_id": customer.id,
                    "first_failed_at": BASE,
                    "decline_category": "insufficient_funds",
                    "decline_retryable": True,
                    "decline_advice": Advice.RETRY,
                    "attempt_count": 1,
                    "created_at": BASE,
                    "updated_at": BASE,
                }
                for pid in ids
            ],
        )
        await uow.commit()

    async def control_count() -> int:
        async with db.session(SYSTEM_SCOPE) as session:
            assert await rollup_differences(session, [merchant.id]) == []
            found = await session.execute(
                sa.text(
                    "SELECT coalesce(sum(failed_count), 0) FROM recovery_rollup "
                    "WHERE merchant_id = :m AND control_group"
                ),
                {"m": merchant.id},
            )
            return int(found.scalar_one())

    expected = {v: sum(in_control_group(str(merchant.id), str(p), s) for p in ids)
                for v, s in ((None, 0.10), (2, 0.50), (3, 0.0))}  # fmt: skip
    assert await control_count() == expected[None]
    for version in (2, 3):
        async with db.uow(SYSTEM_SCOPE) as uow:
            await uow.session.execute(
                sa.update(Payment).where(col(Payment.id).in_(ids)).values(policy_version=version)
            )
            await uow.commit()
        assert await control_count() == expected[version]
    assert expected[3] == 0
    assert 70 < expected[2] < 130
