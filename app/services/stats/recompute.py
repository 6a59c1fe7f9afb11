"""Statistics from scratch: the rollups' sums recomputed in Python from `payment`, and compared."""

import uuid
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.enums import Actor, PaymentState, RetryStrategy
from app.models.customer import CardCredential
from app.models.payment import Payment
from app.models.retry_policy import RetryPolicy
from app.models.stats import BUCKET_SECONDS, DAY_DIMENSIONS, TTR_BUCKETS, TTR_EDGES_SECONDS
from app.retry.schedule import CONTROL_SHARE, in_control_group
from app.services.stats.figures import (
    DayRollupKey,
    GroupKey,
    MonthRollupKey,
    RecoveryStats,
    RollupKey,
    Sums,
    assemble,
)
from app.services.stats.query import StatsQuery, series_bounds
from app.services.stats.rollups import (
    day_zones,
    month_zones,
    stored_day_rollups,
    stored_month_rollups,
    stored_rollups,
)


def ttr_bucket(seconds: float) -> int:
    """The histogram bucket of a time to recover (as SQL's width_bucket over the edges)."""
    return bisect_right(TTR_EDGES_SECONDS, seconds)


def bucket_start(moment: datetime) -> datetime:
    """The UTC quarter hour a moment falls in."""
    epoch = int(moment.timestamp()) // BUCKET_SECONDS * BUCKET_SECONDS
    return datetime.fromtimestamp(epoch, UTC)


def contribution(
    payment: Payment, funding: str | None, control_group_percent: int | None = None
) -> tuple[RollupKey, Sums]:
    """A payment's rollup key and what it adds there (the trigger's rule, in Python); its arm
    is drawn with the control share of the policy version it was last decided under."""
    share = CONTROL_SHARE if control_group_percent is None else control_group_percent / 100
    key = RollupKey(
        merchant_id=payment.merchant_id,
        bucket_start=bucket_start(payment.first_failed_at),
        currency=payment.currency,
        processor=str(payment.processor),
        decline_category=str(payment.decline_category),
        funding=funding or "unknown",
        control_group=in_control_group(str(payment.merchant_id), str(payment.id), share),
        retryable=payment.decline_retryable,
    )
    amount = payment.amount_minor
    actor = payment.recovered_by
    recovered = payment.state is PaymentState.RECOVERED and actor is not None
    is_open = not PaymentState(payment.state).is_terminal
    values: dict[str, Any] = {
        "failed_count": 1,
        "failed_amount": amount,
        "open_count": int(is_open),
        "open_amount": amount if is_open else 0,
        "model_count": int(payment.decision_strategy is RetryStrategy.MODEL),
    }
    histogram = [0] * TTR_BUCKETS
    if recovered and actor is not None:
        values[f"recovered_{Actor(actor).value}_count"] = 1
        values[f"recovered_{Actor(actor).value}_amount"] = amount
        values["recovered_retries"] = max(payment.attempt_count - 1, 0)
        if payment.recovered_at is not None:
            seconds = (payment.recovered_at - payment.first_failed_at).total_seconds()
            histogram[ttr_bucket(seconds)] = 1
    return key, Sums(**values, ttr_histogram=tuple(histogram))


async def rollups_from_payments(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[RollupKey, Sums]:
    """What the rollup table should hold, from every payment the session may see."""
    statement = (
        sa.select(Payment, col(CardCredential.funding), col(RetryPolicy.control_group_percent))
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .outerjoin(
            RetryPolicy,
            (col(RetryPolicy.merchant_id) == col(Payment.merchant_id))
            & (col(RetryPolicy.version) == col(Payment.policy_version)),
        )
    )
    if merchant_ids is not None:
        statement = statement.where(col(Payment.merchant_id).in_(sorted(merchant_ids)))
    found: dict[RollupKey, Sums] = defaultdict(Sums)
    for payment, funding, percent in (await session.execute(statement)).all():
        key, sums = contribution(payment, None if funding is None else str(funding), percent)
        found[key] = found[key] + sums
    return {k: v for k, v in found.items() if not v.is_zero}


def day_rollups_from(
    rows: Mapping[RollupKey, Sums], zones: Mapping[uuid.UUID, str]
) -> dict[DayRollupKey, Sums]:
    """The day rollup rows the quarter-hour rows `rows` make (the triggers' regrouping, in
    Python): each row counts on the local date of its quarter hour, in its merchant's zone,
    once under every dimension; merchants without a zone have no day rows."""
    found: dict[DayRollupKey, Sums] = defaultdict(Sums)
    for key, sums in rows.items():
        zone = zones.get(key.merchant_id)
        if zone is None:
            continue
        day = key.bucket_start.astimezone(ZoneInfo(zone)).date()
        values = (str(key.control_group).lower(), key.decline_category, key.processor, key.funding)
        for dimension, value in zip(DAY_DIMENSIONS, values, strict=True):
            at = DayRollupKey(key.merchant_id, day, key.currency, key.retryable, dimension, value)
            found[at] = found[at] + sums
    return {k: v for k, v in found.items() if not v.is_zero}


def month_rollups_from(days: Mapping[DayRollupKey, Sums]) -> dict[MonthRollupKey, Sums]:
    """The month rollup rows the day rollup rows `days` make (each day counts in its month)."""
    found: dict[MonthRollupKey, Sums] = defaultdict(Sums)
    for key, sums in days.items():
        at = MonthRollupKey(
            key.merchant_id,
            key.day.replace(day=1),
            key.currency,
            key.retryable,
            key.dimension,
            key.value,
        )
        found[at] = found[at] + sums
    return {k: v for k, v in found.items() if not v.is_zero}


async def policy_zones(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, str]:
    """Each merchant's current retry policy's time zone: the zone its day rollups belong in."""
    statement = sa.select(col(RetryPolicy.merchant_id), col(RetryPolicy.timezone)).order_by(
        col(RetryPolicy.version)
    )
    if merchant_ids is not None:
        statement = statement.where(col(RetryPolicy.merchant_id).in_(sorted(merchant_ids)))
    # Ordered by version: each merchant's last row is its current policy.
    return {row[0]: row[1] for row in (await session.execute(statement)).all()}


@dataclass(frozen=True, slots=True)
class RollupDifference:
    """A rollup row (quarter hour or day) that disagrees with its recomputation (None: the
    row is missing)."""

    key: RollupKey | DayRollupKey | MonthRollupKey
    stored: Sums | None
    expected: Sums | None


@dataclass(frozen=True, slots=True)
class ZoneDifference:
    """A merchant whose day (or month) rollups are kept in another zone than its current
    policy's."""

    merchant_id: uuid.UUID
    stored: str | None
    expected: str | None


async def rollup_differences(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> list[RollupDifference | ZoneDifference]:
    """Every difference between the rollup tables and a recomputation from `payment` (and
    the current policies' zones); empty when they agree. Reads every visible payment: a
    check, not a request path."""
    stored = await stored_rollups(session, merchant_ids)
    expected = await rollups_from_payments(session, merchant_ids)
    found: list[RollupDifference | ZoneDifference] = [
        RollupDifference(key, stored.get(key), expected.get(key))
        for key in sorted(stored.keys() | expected.keys(), key=_sort_key)
        if stored.get(key) != expected.get(key)
    ]
    zones = await day_zones(session, merchant_ids)
    wanted = await policy_zones(session, merchant_ids)
    found += [
        ZoneDifference(m, zones.get(m), wanted.get(m))
        for m in sorted(zones.keys() | wanted.keys(), key=str)
        if zones.get(m) != wanted.get(m)
    ]
    stored_days = await stored_day_rollups(session, merchant_ids)
    expected_days = day_rollups_from(expected, wanted)
    found += [
        RollupDifference(key, stored_days.get(key), expected_days.get(key))
        for key in sorted(stored_days.keys() | expected_days.keys(), key=_day_sort_key)
        if stored_days.get(key) != expected_days.get(key)
    ]
    # Month rows: in the same zone as the day rows, their sums regrouped by month.
    months = await month_zones(session, merchant_ids)
    found += [
        ZoneDifference(m, months.get(m), wanted.get(m))
        for m in sorted(months.keys() | wanted.keys(), key=str)
        if months.get(m) != wanted.get(m)
    ]
    stored_months = await stored_month_rollups(session, merchant_ids)
    expected_months = month_rollups_from(expected_days)
    found += [
        RollupDifference(key, stored_months.get(key), expected_months.get(key))
        for key in sorted(stored_months.keys() | expected_months.keys(), key=_month_sort_key)
        if stored_months.get(key) != expected_months.get(key)
    ]
    return found


def _month_sort_key(key: MonthRollupKey) -> tuple[Any, ...]:
    return (str(key.merchant_id), key.month, key.currency, key.retryable, key.dimension, key.value)


def _day_sort_key(key: DayRollupKey) -> tuple[Any, ...]:
    return (str(key.merchant_id), key.day, key.currency, key.retryable, key.dimension, key.value)


def _sort_key(key: RollupKey) -> tuple[Any, ...]:
    return (str(key.merchant_id), key.bucket_start, key.currency, key.processor,
            key.decline_category, key.funding, key.control_group, key.retryable)  # fmt: skip


def group_rollups(
    query: StatsQuery, rows: Mapping[RollupKey, Sums], *, per_merchant: bool
) -> dict[GroupKey, Sums]:
    """The grouping sets of `load_stats`, in Python, over rollup rows."""
    bounds = series_bounds(query)
    selected = {k: v for k, v in rows.items() if query.start <= k.bucket_start < query.end}
    model_merchants: dict[uuid.UUID, int] = defaultdict(int)
    for key, sums in selected.items():
        model_merchants[key.merchant_id] += sums.model_count
    groups: dict[GroupKey, Sums] = defaultdict(Sums)
    for key, sums in selected.items():
        owner = key.merchant_id if per_merchant else None
        values: list[tuple[str, Any]] = [
            ("total", None),
            ("series", bisect_right(bounds, key.bucket_start)),
            ("decline_category", key.decline_category),
            ("processor", key.processor),
            ("funding", key.funding),
            ("arm", (model_merchants[key.merchant_id] > 0, key.control_group)),
        ]
        for dim, value in values:
            group = (owner, key.currency, dim, value, key.retryable)
            groups[group] = groups[group] + sums
    return groups


async def recompute(
    session: AsyncSession,
    query: StatsQuery,
    *,
    merchant_ids: Sequence[uuid.UUID] | None,
    per_merchant: bool,
) -> dict[uuid.UUID | None, RecoveryStats]:
    """The figures of `load_stats`, computed from scratch from `payment` (a full scan)."""
    rows = await rollups_from_payments(session, merchant_ids)
    owners: list[uuid.UUID | None] = list(merchant_ids or []) if per_merchant else [None]
    return assemble(query, group_rollups(query, rows, per_merchant=per_merchant), owners)
