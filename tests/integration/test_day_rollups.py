"""Day rollups (migration 0021): local days in the merchant's zone, rebuilt when it changes,
exact against the recomputation from payments across DST days."""

import importlib.util
import uuid
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
from app.services.stats.query import Granularity, stats_query, whole_days
from app.services.stats.recompute import recompute, rollup_differences
from app.services.stats.rollups import day_zones, load_stats
from app.tenancy import SYSTEM_SCOPE, system_principal
from tests.support.factories import make_merchant

MIGRATION = Path(__file__).parents[2] / "migrations" / "versions" / "0023_recovery_day_rollups.py"
# Europe/Paris leaves summer time on 2026-10-25 (a 25-hour day) and enters it on 2027-03-28
# (a 23-hour day); America/New_York on 2026-11-01 and 2027-03-14.
FALL = datetime(2026, 10, 24, tzinfo=UTC)
SPRING = datetime(2027, 3, 27, tzinfo=UTC)


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("day_rollup_migration", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_copies_match_the_code() -> None:
    migration = _migration()
    assert migration.MEASURES == MEASURES
    assert migration.TTR_BUCKETS == TTR_BUCKETS
    assert "('control_group', d.control_group::text)" in migration.DIMENSIONS
    for dimension in DAY_DIMENSIONS:
        assert f"('{dimension}'," in migration.DIMENSIONS


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
