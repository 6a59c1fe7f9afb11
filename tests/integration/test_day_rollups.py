"""Day and month rollups (migrations 0023 and 0032): local days and months in the merchant's
zone, rebuilt when it changes, exact against the recomputation from payments across DST days
and month boundaries."""

import importlib.util
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.db import Database
from app.enums import Actor, Advice, PaymentState, Processor
from app.models.customer import Customer
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.stats import DAY_DIMENSIONS, MEASURES, TTR_BUCKETS
from app.services.retry_policy import PolicyChanges, update_retry_policy
from app.services.stats.query import (
    COVERED_DAY,
    EDGE_DAY,
    SERIES_DAY,
    Granularity,
    stats_query,
    whole_days,
    whole_months,
)
from app.services.stats.recompute import recompute, rollup_differences
from app.services.stats.rollups import day_zones, load_stats, month_zones
from app.tenancy import SYSTEM_SCOPE, system_principal
from tests.support.factories import make_merchant

VERSIONS = Path(__file__).parents[2] / "migrations" / "versions"
MIGRATION = VERSIONS / "0023_recovery_day_rollups.py"
CHANGED_ROWS_MIGRATION = VERSIONS / "0031_rollup_changed_rows.py"
MONTH_MIGRATION = VERSIONS / "0032_recovery_month_rollups.py"
# Europe/Paris leaves summer time on 2026-10-25 (a 25-hour day) and enters it on 2027-03-28
# (a 23-hour day); America/New_York on 2026-11-01 and 2027-03-14.
FALL = datetime(2026, 10, 24, tzinfo=UTC)
SPRING = datetime(2027, 3, 27, tzinfo=UTC)


def _migration(path: Path = MIGRATION) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_copies_match_the_code() -> None:
    for migration in (_migration(), _migration(MONTH_MIGRATION)):
        assert migration.MEASURES == MEASURES
        assert migration.TTR_BUCKETS == TTR_BUCKETS
        assert "('control_group', d.control_group::text)" in migration.DIMENSIONS
        for dimension in DAY_DIMENSIONS:
            assert f"('{dimension}'," in migration.DIMENSIONS


def test_the_month_migration_gives_back_the_previous_functions() -> None:
    """0032's downgrade restores 0031's payment function (0023's with the filter of an
    `UPDATE`'s unchanged rows), 0023's card and truncate functions and day rebuild."""
    days, months = _migration(), _migration(MONTH_MIGRATION)
    changed = _migration(CHANGED_ROWS_MIGRATION)

    def compact(text: str) -> str:
        return " ".join(text.replace("CREATE OR REPLACE", "CREATE").split())

    _payment, card, truncate = days._trigger_functions(days=True)
    before = [changed._payment_function(changed._day_rollups()), card, truncate]
    for old, new in zip(before, months._trigger_functions(months=False), strict=True):
        assert compact(old) == compact(new)
    assert "recovery_month" not in months._day_rebuild(False)
    # The month revision keeps the filter.
    assert "NOT EXISTS (SELECT 1 FROM old_rows y" in months._trigger_functions(months=True)[0]


def test_whole_months_of_a_range_across_dst() -> None:
    """The months wholly inside a range's whole days, in the query's zone; a daily or weekly
    series still needs their days, a monthly one does not."""
    start = datetime(2026, 9, 20, 5, tzinfo=UTC)
    end = datetime(2026, 12, 10, 5, tzinfo=UTC)
    for granularity, points in (
        (Granularity.DAY, (None, None)),
        (Granularity.WEEK, (None, None)),
        (Granularity.MONTH, (2, 3)),
    ):
        query = stats_query(start, end, granularity, "Europe/Paris")
        whole = whole_days(query)
        months = whole_months(whole)
        assert months.months == (date(2026, 10, 1), date(2026, 11, 1))
        assert months.points == points
        kinds = dict(zip(whole.days, months.day_kinds, strict=True))
        inner = SERIES_DAY if points[0] is None else COVERED_DAY
        assert kinds[date(2026, 9, 30)] == EDGE_DAY
        # The 25-hour day of the change to winter time lies in a whole month.
        assert kinds[date(2026, 10, 1)] == kinds[date(2026, 10, 25)] == inner
        assert kinds[date(2026, 11, 30)] == inner
        assert kinds[date(2026, 12, 1)] == EDGE_DAY
    # October in Paris exactly: local midnights at both ends (+02:00, then +01:00).
    october = stats_query(
        datetime(2026, 9, 30, 22, tzinfo=UTC),
        datetime(2026, 10, 31, 23, tzinfo=UTC),
        Granularity.MONTH,
        "Europe/Paris",
    )
    months = whole_months(whole_days(october))
    assert months.months == (date(2026, 10, 1),)
    assert set(months.day_kinds) == {COVERED_DAY}
    # An hour short of it: no whole month.
    short = replace(october, end=datetime(2026, 10, 31, 22, tzinfo=UTC))
    assert whole_months(whole_days(short)).months == ()


def test_whole_days_follow_local_midnights_across_dst() -> None:
    query = stats_query(
        datetime(2026, 10, 24, 12, tzinfo=UTC),
        datetime(2026, 10, 27, 5, tzinfo=UTC),
        Granularity.DAY,
        "Europe/Paris",
    )
    whole = whole_days(query)
    assert whole.days == (date(2026, 10, 25), date(2026, 10, 26))
    # Local midnights: +02:00 before the change, +01:00 after; the 25th lasts 25 hours.
    assert whole.low == datetime(2026, 10, 24, 22, tzinfo=UTC)
    assert whole.high == datetime(2026, 10, 26, 23, tzinfo=UTC)
    assert whole.points == (2, 3)
    none = stats_query(FALL, FALL + timedelta(hours=20), Granularity.DAY, "Europe/Paris")
    assert whole_days(none).days == ()


async def _merchant(db: Database, zone: str) -> tuple[Merchant, Customer]:
    merchant = await make_merchant(db, f"Days {uuid.uuid4().hex[:6]}", now=FALL)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await update_retry_policy(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            expected_version=1,
            changes=PolicyChanges(timezone=zone),
            reason="own zone",
            now=FALL,
        )
        customer = Customer(merchant_id=merchant.id, external_ref=uuid.uuid4().hex, created_at=FALL)
        uow.session.add(customer)
        await uow.commit()
    return merchant, customer


async def _payments(
    db: Database, merchant: Merchant, customer: Customer, minutes: list[int], base: datetime
) -> None:
    rows = []
    for i, m in enumerate(minutes):
        pid = uuid.uuid4()
        recovered = i % 3 == 0
        rows.append(
            {
                "id": pid,
                "merchant_id": merchant.id,
                "processor": Processor.STRIPE if i % 2 else Processor.ADYEN,
                "processor_payment_id": pid.hex,
                "amount_minor": 100 + i,
                "currency": "EUR" if i % 4 else "USD",
                "customer_id": customer.id,
                "first_failed_at": base + timedelta(minutes=m),
                "decline_category": "insufficient_funds" if i % 5 else "card_expired",
                "decline_retryable": bool(i % 5),
                "decline_advice": Advice.RETRY,
                "attempt_count": 1 + i % 4,
                "state": PaymentState.RECOVERED if recovered else PaymentState.SCHEDULED,
                "recovered_by": Actor.PORTAL if recovered else None,
                "recovered_at": base + timedelta(minutes=m + 60 * (i % 50)) if recovered else None,
                "created_at": base,
                "updated_at": base,
            }
        )
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(sa.insert(Payment), rows)
        await uow.commit()


async def _day_rows(db: Database, merchant: Merchant) -> int:
    async with db.session(SYSTEM_SCOPE) as session:
        found = await session.execute(
            sa.text("SELECT count(*) FROM recovery_day_rollup WHERE merchant_id = :m"),
            {"m": merchant.id},
        )
        return int(found.scalar_one())


async def _served_equals_recomputed(
    db: Database, merchant: Merchant, start: datetime, end: datetime, zone: str
) -> None:
    async with db.session(SYSTEM_SCOPE) as session:
        assert await rollup_differences(session, [merchant.id]) == []
        for granularity in Granularity:
            query = stats_query(start, end, granularity, zone)
            served = await load_stats(session, query, merchant_ids=[merchant.id], per_merchant=True)
            expected = await recompute(
                session, query, merchant_ids=[merchant.id], per_merchant=True
            )
            assert served == expected


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    minutes=st.lists(st.integers(0, 4 * 24 * 60), min_size=1, max_size=30),
    start=st.integers(0, 2 * 24 * 60),
    length=st.integers(1, 3 * 24 * 60),
    spring=st.booleans(),
)
async def test_dst_days_equal_recomputation(
    db: Database, minutes: list[int], start: int, length: int, spring: bool
) -> None:
    """Payments around a DST change, any range (partial days at both edges or none)."""
    base = SPRING if spring else FALL
    merchant, customer = await _merchant(db, "Europe/Paris")
    await _payments(db, merchant, customer, minutes, base)
    begin = base + timedelta(minutes=start)
    await _served_equals_recomputed(
        db, merchant, begin, begin + timedelta(minutes=length), "Europe/Paris"
    )


async def test_a_zone_change_rebuilds_the_day_rollups(db: Database) -> None:
    merchant, customer = await _merchant(db, "Europe/Paris")
    await _payments(db, merchant, customer, list(range(0, 4 * 24 * 60, 47)), FALL)
    async with db.session(SYSTEM_SCOPE) as session:
        assert await day_zones(session, [merchant.id]) == {merchant.id: "Europe/Paris"}
    rows_in_paris = await _day_rows(db, merchant)
    assert rows_in_paris > 0
    async with db.uow(SYSTEM_SCOPE) as uow:
        await update_retry_policy(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            expected_version=2,
            changes=PolicyChanges(timezone="Asia/Kolkata"),
            reason="moved",
            now=FALL,
        )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as session:
        assert await day_zones(session, [merchant.id]) == {merchant.id: "Asia/Kolkata"}
    end = FALL + timedelta(days=4)
    await _served_equals_recomputed(db, merchant, FALL, end, "Asia/Kolkata")
    # A query in the old zone now reads quarter hours, and is as exact.
    await _served_equals_recomputed(db, merchant, FALL, end, "Europe/Paris")
    # A policy change that keeps the zone leaves the day rows as they are.
    async with db.uow(SYSTEM_SCOPE) as uow:
        await update_retry_policy(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            expected_version=3,
            changes=PolicyChanges(max_attempts=10),
            reason="more",
            now=FALL,
        )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as session:
        assert await rollup_differences(session, [merchant.id]) == []


async def test_the_rebuild_refills_a_merchant_from_its_quarter_hours(db: Database) -> None:
    """The migration's backfill calls the rebuild per merchant: from empty day tables it
    refills exactly what the triggers had kept."""
    merchant, customer = await _merchant(db, "America/New_York")
    await _payments(db, merchant, customer, list(range(0, 3 * 24 * 60, 31)), FALL)
    kept = await _day_rows(db, merchant)
    async with db.uow(SYSTEM_SCOPE) as uow:
        for table in ("recovery_day_rollup", "recovery_day_zone"):
            await uow.session.execute(
                sa.text(f"DELETE FROM {table} WHERE merchant_id = :m"),  # noqa: S608 - constants
                {"m": merchant.id},
            )
        await uow.session.execute(sa.text("SELECT recovery_day_rebuild(:m)"), {"m": merchant.id})
        await uow.commit()
    assert await _day_rows(db, merchant) == kept > 0
    await _served_equals_recomputed(
        db, merchant, FALL, FALL + timedelta(days=3), "America/New_York"
    )


# Every 7 hours 13 minutes from 2026-09-28 for about 190 days: both DST changes of Paris and
# New York, and payments near every local month boundary.
MONTHS_BASE = datetime(2026, 9, 28, tzinfo=UTC)
MONTH_MINUTES = list(range(0, 190 * 24 * 60, 433))
# Each month's first local quarter hour and the last one before it, in Paris (+02:00 until
# 25 October, +01:00 until 28 March).
BOUNDARY_TIMES = [
    datetime(2026, 9, 30, 21, 45, tzinfo=UTC),
    datetime(2026, 9, 30, 22, tzinfo=UTC),
    datetime(2026, 10, 31, 22, 45, tzinfo=UTC),
    datetime(2026, 10, 31, 23, tzinfo=UTC),
    datetime(2027, 2, 28, 22, 59, tzinfo=UTC),
    datetime(2027, 2, 28, 23, tzinfo=UTC),
    datetime(2027, 3, 31, 21, 59, tzinfo=UTC),
    datetime(2027, 3, 31, 22, tzinfo=UTC),
]


async def _month_payments(db: Database, merchant: Merchant, customer: Customer) -> None:
    minutes = MONTH_MINUTES + [int((t - MONTHS_BASE).total_seconds() // 60) for t in BOUNDARY_TIMES]
    await _payments(db, merchant, customer, minutes, MONTHS_BASE)


async def _month_rows(db: Database, merchant: Merchant) -> int:
    async with db.session(SYSTEM_SCOPE) as session:
        found = await session.execute(
            sa.text("SELECT count(*) FROM recovery_month_rollup WHERE merchant_id = :m"),
            {"m": merchant.id},
        )
        return int(found.scalar_one())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.integers(0, 60 * 24 * 4),
    length=st.integers(24 * 4, 150 * 24 * 4),
)
async def test_months_equal_recomputation_across_dst(db: Database, start: int, length: int) -> None:
    """Whole months from the month rollup, the edge months' days from the day rollup, the edge
    days by the quarter hour: any range (a multiple of 15 minutes, so often a local midnight)
    in every granularity equals the recomputation."""
    merchant, customer = await _merchant(db, "Europe/Paris")
    await _month_payments(db, merchant, customer)
    assert await _month_rows(db, merchant) > 0
    begin = MONTHS_BASE + timedelta(minutes=15 * start)
    await _served_equals_recomputed(
        db, merchant, begin, begin + timedelta(minutes=15 * length), "Europe/Paris"
    )


async def test_exact_months_across_both_dst_changes(db: Database) -> None:
    merchant, customer = await _merchant(db, "Europe/Paris")
    await _month_payments(db, merchant, customer)
    for start, end in (
        # October to March at local midnights: both changes inside whole months.
        (datetime(2026, 9, 30, 22, tzinfo=UTC), datetime(2027, 3, 31, 22, tzinfo=UTC)),
        # November to February: +01:00 throughout.
        (datetime(2026, 10, 31, 23, tzinfo=UTC), datetime(2027, 2, 28, 23, tzinfo=UTC)),
        # Partial days and months at both ends.
        (datetime(2026, 10, 12, 7, 30, tzinfo=UTC), datetime(2027, 1, 19, 13, 15, tzinfo=UTC)),
    ):
        await _served_equals_recomputed(db, merchant, start, end, "Europe/Paris")
        # Another zone reads quarter hours (no month rows of that zone): as exact.
        await _served_equals_recomputed(db, merchant, start, end, "America/New_York")
    # The month rows are what a range of whole months reads: a change to one shows.
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            sa.text(
                "UPDATE recovery_month_rollup SET failed_count = failed_count + 1000 "
                "WHERE merchant_id = :m AND month = '2026-11-01' AND dimension = 'control_group'"
            ),
            {"m": merchant.id},
        )
        await uow.commit()
    november = stats_query(
        datetime(2026, 10, 31, 23, tzinfo=UTC),
        datetime(2026, 11, 30, 23, tzinfo=UTC),
        Granularity.MONTH,
        "Europe/Paris",
    )
    async with db.session(SYSTEM_SCOPE) as session:
        served = await load_stats(session, november, merchant_ids=[merchant.id], per_merchant=True)
        expected = await recompute(session, november, merchant_ids=[merchant.id], per_merchant=True)
    (mine,) = served[merchant.id].currencies[:1]
    (theirs,) = expected[merchant.id].currencies[:1]
    assert mine.summary.failed_count >= theirs.summary.failed_count + 1000


async def test_a_zone_change_rebuilds_the_month_rollups(db: Database) -> None:
    merchant, customer = await _merchant(db, "Europe/Paris")
    await _month_payments(db, merchant, customer)
    async with db.session(SYSTEM_SCOPE) as session:
        assert await month_zones(session, [merchant.id]) == {merchant.id: "Europe/Paris"}
    async with db.uow(SYSTEM_SCOPE) as uow:
        await update_retry_policy(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            expected_version=2,
            changes=PolicyChanges(timezone="America/New_York"),
            reason="moved",
            now=FALL,
        )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as session:
        assert await month_zones(session, [merchant.id]) == {merchant.id: "America/New_York"}
    assert await _month_rows(db, merchant) > 0
    # New York midnights: -04:00 until 1 November, -05:00 until 14 March.
    start = datetime(2026, 10, 1, 4, tzinfo=UTC)
    end = datetime(2027, 4, 1, 4, tzinfo=UTC)
    await _served_equals_recomputed(db, merchant, start, end, "America/New_York")
    await _served_equals_recomputed(db, merchant, start, end, "Europe/Paris")


async def test_the_month_rebuild_refills_a_merchant_from_its_day_rows(db: Database) -> None:
    """The migration's backfill calls the month rebuild per merchant: from empty month tables it
    refills exactly what the triggers had kept; until then the merchant reads day rows."""
    merchant, customer = await _merchant(db, "Europe/Paris")
    await _month_payments(db, merchant, customer)
    kept = await _month_rows(db, merchant)
    start, end = datetime(2026, 9, 30, 22, tzinfo=UTC), datetime(2027, 3, 31, 22, tzinfo=UTC)
    async with db.uow(SYSTEM_SCOPE) as uow:
        for table in ("recovery_month_rollup", "recovery_month_zone"):
            await uow.session.execute(
                sa.text(f"DELETE FROM {table} WHERE merchant_id = :m"),  # noqa: S608 - constants
                {"m": merchant.id},
            )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as session:
        query = stats_query(start, end, Granularity.DAY, "Europe/Paris")
        served = await load_stats(session, query, merchant_ids=[merchant.id], per_merchant=True)
        assert served == await recompute(
            session, query, merchant_ids=[merchant.id], per_merchant=True
        )
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(sa.text("SELECT recovery_month_rebuild(:m)"), {"m": merchant.id})
        await uow.commit()
    assert await _month_rows(db, merchant) == kept > 0
    await _served_equals_recomputed(db, merchant, start, end, "Europe/Paris")
