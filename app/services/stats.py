"""Recovery statistics (DOMAIN.md §4) from the rollups, recomputed from payments, and compared."""

import math
import uuid
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.enums import Actor, PaymentState, RetryStrategy
from app.errors import InvalidTimeRange, InvalidTimezone
from app.models.customer import CardCredential
from app.models.payment import Payment
from app.models.stats import (
    BUCKET_SECONDS,
    MEASURES,
    TTR_BUCKETS,
    TTR_EDGES_SECONDS,
    RecoveryRollup,
)
from app.retry.schedule import in_control_group

MAX_POINTS = 1000
MIN_ARM_SIZE = 30
Z_95 = 1.959963984540054
ACTORS = (Actor.PORTAL, Actor.PROCESSOR, Actor.BILLING_SYSTEM, Actor.CUSTOMER)


class Granularity(StrEnum):
    """The width of one point of the time series, in the query's timezone."""

    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """A validated request: the half-open range [start, end), the series grain and timezone."""

    start: datetime
    end: datetime
    granularity: Granularity
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def stats_query(
    start: datetime, end: datetime, granularity: Granularity, timezone: str | None
) -> StatsQuery:
    """Validate a request; raises `InvalidTimezone` or `InvalidTimeRange`."""
    name = "UTC" if timezone is None else timezone
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidTimezone(f"unknown IANA timezone {name!r}", field="timezone") from exc
    for label, value in (("from", start), ("to", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidTimeRange(f"{label} needs a UTC offset", field=label)
    if start >= end:
        raise InvalidTimeRange("to must be later than from", field="to")
    query = StatsQuery(start.astimezone(UTC), end.astimezone(UTC), granularity, name)
    # Counted without building the list: a range of centuries must not cost memory to refuse.
    span_days = (query.end - query.start).days
    estimate = {Granularity.DAY: span_days, Granularity.WEEK: span_days // 7}.get(
        granularity, span_days // 28
    )
    if estimate > MAX_POINTS or len(series_bounds(query)) - 1 > MAX_POINTS:
        raise InvalidTimeRange(
            f"the range spans more than {MAX_POINTS} {granularity.lower()}s", field="to"
        )
    return query


def _local_floor(moment: datetime, granularity: Granularity, zone: ZoneInfo) -> datetime:
    local = moment.astimezone(zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if granularity is Granularity.WEEK:
        day -= timedelta(days=day.weekday())
    elif granularity is Granularity.MONTH:
        day = day.replace(day=1)
    return day.replace(tzinfo=zone)


def _local_next(start: datetime, granularity: Granularity, zone: ZoneInfo) -> datetime:
    naive = start.replace(tzinfo=None)
    if granularity is Granularity.DAY:
        naive += timedelta(days=1)
    elif granularity is Granularity.WEEK:
        naive += timedelta(days=7)
    else:
        naive = naive.replace(year=naive.year + naive.month // 12, month=naive.month % 12 + 1)
    return naive.replace(tzinfo=zone)


def series_bounds(query: StatsQuery) -> list[datetime]:
    """Local boundaries (UTC instants) b0 <= start < ... < bk, bk >= end: point i is
    [b(i-1), b(i)), calendar days, weeks (from Monday) or months in the query's timezone."""
    zone = query.zone
    current = _local_floor(query.start, query.granularity, zone)
    bounds = [current.astimezone(UTC)]
    while bounds[-1] < query.end and len(bounds) <= MAX_POINTS + 1:
        current = _local_next(current, query.granularity, zone)
        bounds.append(current.astimezone(UTC))
    return bounds


@dataclass(frozen=True, slots=True)
class Sums:
    """The summed columns of rollup rows (see `app.models.stats.MEASURES`)."""

    failed_count: int = 0
    failed_amount: int = 0
    open_count: int = 0
    open_amount: int = 0
    recovered_portal_count: int = 0
    recovered_portal_amount: int = 0
    recovered_processor_count: int = 0
    recovered_processor_amount: int = 0
    recovered_billing_system_count: int = 0
    recovered_billing_system_amount: int = 0
    recovered_customer_count: int = 0
    recovered_customer_amount: int = 0
    recovered_retries: int = 0
    model_count: int = 0
    ttr_histogram: tuple[int, ...] = (0,) * TTR_BUCKETS

    def __add__(self, other: "Sums") -> "Sums":
        return _sums(
            [getattr(self, m) + getattr(other, m) for m in MEASURES],
            tuple(a + b for a, b in zip(self.ttr_histogram, other.ttr_histogram, strict=True)),
        )

    @property
    def is_zero(self) -> bool:
        return self == ZERO

    @classmethod
    def of(cls, values: Sequence[Any], histogram: Sequence[int] | None) -> "Sums":
        return _sums(
            [int(v or 0) for v in values],
            tuple(int(h) for h in histogram) if histogram else (0,) * TTR_BUCKETS,
        )


def _sums(values: Sequence[int], histogram: tuple[int, ...]) -> Sums:
    named: dict[str, Any] = dict(zip(MEASURES, values, strict=True))
    return Sums(**named, ttr_histogram=histogram)


ZERO = Sums()
EMPTY: tuple[Sums, Sums] = (ZERO, ZERO)
if tuple(f.name for f in fields(Sums))[: len(MEASURES)] != MEASURES:  # pragma: no cover
    raise RuntimeError("Sums must list the rollup measures in their order")


@dataclass(frozen=True, slots=True)
class ActorRecovery:
    """Recoveries brought about by one actor."""

    actor: Actor
    count: int
    amount: int


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _quantile_seconds(histogram: Sequence[int], q: float) -> int | None:
    """The q-quantile of the histogram, interpolated linearly within its bucket; the open
    last bucket answers its lower edge."""
    total = sum(histogram)
    if total == 0:
        return None
    target = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= target:
            low = 0 if index == 0 else TTR_EDGES_SECONDS[index - 1]
            if index == len(TTR_EDGES_SECONDS):
                return low
            high = TTR_EDGES_SECONDS[index]
            return round(low + (high - low) * (target - seen) / count)
        seen += count
    return None  # pragma: no cover - the loop always reaches the target


@dataclass(frozen=True, slots=True)
class RecoveryFigures:
    """Every figure of one population (one currency, point or breakdown value)."""

    failed_count: int
    failed_amount: int
    eligible_count: int
    eligible_amount: int
    recovered: tuple[ActorRecovery, ...]
    eligible_recovered_count: int
    eligible_recovered_amount: int
    in_recovery_count: int
    in_recovery_amount: int
    recovered_retries: int
    ttr_histogram: tuple[int, ...]

    @classmethod
    def of(cls, eligible: Sums, never: Sums) -> "RecoveryFigures":
        both = eligible + never
        return cls(
            failed_count=both.failed_count,
            failed_amount=both.failed_amount,
            eligible_count=eligible.failed_count,
            eligible_amount=eligible.failed_amount,
            recovered=tuple(
                ActorRecovery(
                    a,
                    getattr(both, f"recovered_{a.value}_count"),
                    getattr(both, f"recovered_{a.value}_amount"),
                )
                for a in ACTORS
            ),
            eligible_recovered_count=sum(
                getattr(eligible, f"recovered_{a.value}_count") for a in ACTORS
            ),
            eligible_recovered_amount=sum(
                getattr(eligible, f"recovered_{a.value}_amount") for a in ACTORS
            ),
            in_recovery_count=both.open_count,
            in_recovery_amount=both.open_amount,
            recovered_retries=both.recovered_retries,
            ttr_histogram=both.ttr_histogram,
        )

    @property
    def recovered_count(self) -> int:
        return sum(r.count for r in self.recovered)

    @property
    def recovered_amount(self) -> int:
        return sum(r.amount for r in self.recovered)

    @property
    def recovery_rate_by_count(self) -> float | None:
        return _rate(self.recovered_count, self.failed_count)

    @property
    def recovery_rate_by_amount(self) -> float | None:
        return _rate(self.recovered_amount, self.failed_amount)

    @property
    def eligible_recovery_rate_by_count(self) -> float | None:
        return _rate(self.eligible_recovered_count, self.eligible_count)

    @property
    def eligible_recovery_rate_by_amount(self) -> float | None:
        return _rate(self.eligible_recovered_amount, self.eligible_amount)

    @property
    def attempts_per_recovery(self) -> float | None:
        return _rate(self.recovered_retries, self.recovered_count)

    @property
    def median_time_to_recover_seconds(self) -> int | None:
        return _quantile_seconds(self.ttr_histogram, 0.5)

    @property
    def p90_time_to_recover_seconds(self) -> int | None:
        return _quantile_seconds(self.ttr_histogram, 0.9)


@dataclass(frozen=True, slots=True)
class Arm:
    """One side of the uplift comparison: eligible payments and how many were recovered."""

    eligible_count: int
    recovered_count: int

    @property
    def rate(self) -> float | None:
        return _rate(self.recovered_count, self.eligible_count)


def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@dataclass(frozen=True, slots=True)
class Uplift:
    """Model-driven recovery rate minus the control group's, with Newcombe's hybrid score
    interval (Wilson intervals of each rate combined; method 10 of Newcombe 1998)."""

    treatment: Arm
    control: Arm
    difference: float
    lower: float
    upper: float
    confidence: float = 0.95

    @classmethod
    def of(cls, treatment: Arm, control: Arm) -> "Uplift | None":
        if min(treatment.eligible_count, control.eligible_count) < MIN_ARM_SIZE:
            return None
        x1, n1 = treatment.recovered_count, treatment.eligible_count
        x2, n2 = control.recovered_count, control.eligible_count
        p1, p2 = x1 / n1, x2 / n2
        l1, u1 = _wilson(x1, n1, Z_95)
        l2, u2 = _wilson(x2, n2, Z_95)
        d = p1 - p2
        return cls(
            treatment=treatment,
            control=control,
            difference=d,
            lower=d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            upper=d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
        )


@dataclass(frozen=True, slots=True)
class Point:
    """One point of the time series: failures first seen in [start, next point)."""

    start: datetime
    figures: RecoveryFigures


@dataclass(frozen=True, slots=True)
class Breakdown:
    """The figures of payments sharing one value of a dimension."""

    value: str
    figures: RecoveryFigures


@dataclass(frozen=True, slots=True)
class CurrencyStats:
    """Every figure of one currency: amounts are never added across currencies."""

    currency: str
    summary: RecoveryFigures
    series: tuple[Point, ...]
    by_decline_category: tuple[Breakdown, ...]
    by_processor: tuple[Breakdown, ...]
    by_card_funding: tuple[Breakdown, ...]
    uplift: Uplift | None


@dataclass(frozen=True, slots=True)
class RecoveryStats:
    """The statistics of a query, one entry per currency seen, ordered by currency code."""

    query: StatsQuery
    currencies: tuple[CurrencyStats, ...] = field(default=())


# A group of the statistics query: (merchant or None, currency, dimension, value, retryable).
GroupKey = tuple[uuid.UUID | None, str, str, Any, bool]
DIMENSIONS = ("series", "decline_category", "processor", "funding", "arm")


@dataclass(frozen=True, slots=True)
class RollupKey:
    """The key of one rollup row."""

    merchant_id: uuid.UUID
    bucket_start: datetime
    currency: str
    processor: str
    decline_category: str
    funding: str
    control_group: bool
    retryable: bool


def assemble(
    query: StatsQuery, groups: Mapping[GroupKey, Sums], merchants: Iterable[uuid.UUID | None]
) -> dict[uuid.UUID | None, RecoveryStats]:
    """Figures from grouped sums, one `RecoveryStats` per merchant (None: all together)."""
    bounds = series_bounds(query)
    zone = query.zone
    by_owner: dict[uuid.UUID | None, dict[str, dict[tuple[str, Any], list[Sums]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: [ZERO, ZERO]))
    )
    for (owner, currency, dim, value, retryable), sums in groups.items():
        pair = by_owner[owner][currency][(dim, value)]
        pair[0 if retryable else 1] = pair[0 if retryable else 1] + sums

    def figures(pair: Sequence[Sums]) -> RecoveryFigures:
        return RecoveryFigures.of(pair[0], pair[1])

    result: dict[uuid.UUID | None, RecoveryStats] = {}
    for owner in merchants:
        currencies = []
        for currency, dims in sorted(by_owner.get(owner, {}).items()):
            summary = figures(dims[("total", None)])
            if summary.failed_count == 0:
                continue  # only rows whose payments were all deleted or moved

            def breakdown(
                dim: str, dims: dict[tuple[str, Any], list[Sums]] = dims
            ) -> tuple[Breakdown, ...]:
                found = [
                    Breakdown(str(v), figures(p))
                    for (d, v), p in dims.items()
                    if d == dim and (p[0] + p[1]).failed_count
                ]
                return tuple(sorted(found, key=lambda b: b.value))

            def arm(control: bool, dims: dict[tuple[str, Any], list[Sums]] = dims) -> Arm:
                eligible = dims.get(("arm", (True, control)), EMPTY)[0]
                return Arm(
                    eligible.failed_count,
                    sum(getattr(eligible, f"recovered_{a.value}_count") for a in ACTORS),
                )

            currencies.append(
                CurrencyStats(
                    currency=currency,
                    summary=summary,
                    series=tuple(
                        Point(
                            bounds[i - 1].astimezone(zone), figures(dims.get(("series", i), EMPTY))
                        )
                        for i in range(1, len(bounds))
                    ),
                    by_decline_category=breakdown("decline_category"),
                    by_processor=breakdown("processor"),
                    by_card_funding=breakdown("funding"),
                    uplift=Uplift.of(arm(False), arm(True)),
                )
            )
        result[owner] = RecoveryStats(query, tuple(currencies))
    return result


def _grouping_bits(kind: str) -> int:
    """GROUPING() of the statistics query's dimensions for a group kind (1 bit: not grouped)."""
    grouped = {
        "total": (),
        "series": ("idx",),
        "decline_category": ("decline_category",),
        "processor": ("processor",),
        "funding": ("funding",),
        "arm": ("model_merchant", "control_group"),
    }[kind]
    names = ("idx", "decline_category", "processor", "funding", "model_merchant", "control_group")
    return sum(1 << (len(names) - 1 - i) for i, n in enumerate(names) if n not in grouped)


_KIND_BY_BITS = {
    _grouping_bits(k): k
    for k in ("total", "series", "decline_category", "processor", "funding", "arm")
}


def _range(query: StatsQuery, merchant_ids: Sequence[uuid.UUID] | None) -> list[Any]:
    where = [
        col(RecoveryRollup.bucket_start) >= query.start,
        col(RecoveryRollup.bucket_start) < query.end,
    ]
    if merchant_ids is not None:
        where.append(col(RecoveryRollup.merchant_id).in_(sorted(merchant_ids)))
    return where


async def load_stats(
    session: AsyncSession,
    query: StatsQuery,
    *,
    merchant_ids: Sequence[uuid.UUID] | None,
    per_merchant: bool,
) -> dict[uuid.UUID | None, RecoveryStats]:
    """The statistics from the rollups in one statement (grouping sets), within the session's
    scope and, when given, `merchant_ids`. `per_merchant`: one result per merchant id given,
    else one for them all under the key None. A payment counts when the quarter hour (UTC) of
    its first failure starts in [start, end)."""
    r = RecoveryRollup
    bounds = series_bounds(query)
    where = _range(query, merchant_ids)
    model_merchants = (
        sa.select(col(r.merchant_id))
        .where(*where)
        .group_by(col(r.merchant_id))
        .having(sa.func.sum(col(r.model_count)) > 0)
    )
    bounds_param = sa.bindparam(
        "bounds", bounds, type_=postgresql.ARRAY(sa.DateTime(timezone=True))
    )
    inner = (
        sa.select(
            col(r.merchant_id),
            col(r.currency),
            sa.func.width_bucket(col(r.bucket_start), bounds_param).label("idx"),
            col(r.decline_category),
            col(r.processor),
            col(r.funding),
            col(r.merchant_id).in_(model_merchants).label("model_merchant"),
            col(r.control_group),
            col(r.retryable),
            *(getattr(r, m) for m in MEASURES),
            col(r.ttr_histogram),
        )
        .where(*where)
        .subquery()
    )
    c = inner.c
    dims = [c.idx, c.decline_category, c.processor, c.funding, c.model_merchant, c.control_group]
    base = [c.currency, c.retryable, *([c.merchant_id] if per_merchant else [])]
    sets = [sa.tuple_(*base)] + [
        sa.tuple_(*base, *d) for d in ([c.idx], [c.decline_category], [c.processor], [c.funding])
    ]
    sets.append(sa.tuple_(*base, c.model_merchant, c.control_group))
    statement = sa.select(
        *base,
        *dims,
        sa.func.grouping(*dims).label("bits"),
        *(sa.func.sum(c[m]) for m in MEASURES),
        sa.func.recovery_hist_sum(c.ttr_histogram),
    ).group_by(sa.func.grouping_sets(*sets))
    groups: dict[GroupKey, Sums] = {}
    for row in (await session.execute(statement)).all():
        currency, retryable = row[0], row[1]
        owner = row[2] if per_merchant else None
        rest = row[len(base) :]
        idx, category, processor, funding, model_merchant, control, bits = rest[:7]
        kind = _KIND_BY_BITS[bits]
        value = {
            "total": None,
            "series": idx,
            "decline_category": category,
            "processor": processor,
            "funding": funding,
            "arm": (model_merchant, control),
        }[kind]
        groups[(owner, currency, kind, value, retryable)] = Sums.of(
            rest[7 : 7 + len(MEASURES)], rest[7 + len(MEASURES)]
        )
    owners: list[uuid.UUID | None] = list(merchant_ids or []) if per_merchant else [None]
    return assemble(query, groups, owners)


# From scratch: the same sums computed in Python from `payment`, independently of the SQL.


def ttr_bucket(seconds: float) -> int:
    """The histogram bucket of a time to recover (as SQL's width_bucket over the edges)."""
    return bisect_right(TTR_EDGES_SECONDS, seconds)


def bucket_start(moment: datetime) -> datetime:
    """The UTC quarter hour a moment falls in."""
    epoch = int(moment.timestamp()) // BUCKET_SECONDS * BUCKET_SECONDS
    return datetime.fromtimestamp(epoch, UTC)


def contribution(payment: Payment, funding: str | None) -> tuple[RollupKey, Sums]:
    """A payment's rollup key and what it adds there (the trigger's rule, in Python)."""
    key = RollupKey(
        merchant_id=payment.merchant_id,
        bucket_start=bucket_start(payment.first_failed_at),
        currency=payment.currency,
        processor=str(payment.processor),
        decline_category=str(payment.decline_category),
        funding=funding or "unknown",
        control_group=in_control_group(str(payment.merchant_id), str(payment.id)),
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
    statement = sa.select(Payment, col(CardCredential.funding)).outerjoin(
        CardCredential, col(CardCredential.id) == col(Payment.card_id)
    )
    if merchant_ids is not None:
        statement = statement.where(col(Payment.merchant_id).in_(sorted(merchant_ids)))
    found: dict[RollupKey, Sums] = defaultdict(Sums)
    for payment, funding in (await session.execute(statement)).all():
        key, sums = contribution(payment, None if funding is None else str(funding))
        found[key] = found[key] + sums
    return {k: v for k, v in found.items() if not v.is_zero}


async def stored_rollups(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[RollupKey, Sums]:
    """The rollup rows the session may see, without rows whose sums fell back to zero."""
    r = RecoveryRollup
    statement = sa.select(r)
    if merchant_ids is not None:
        statement = statement.where(col(r.merchant_id).in_(sorted(merchant_ids)))
    found: dict[RollupKey, Sums] = {}
    for (row,) in (await session.execute(statement)).all():
        sums = Sums.of([getattr(row, m) for m in MEASURES], row.ttr_histogram)
        if not sums.is_zero:
            found[
                RollupKey(
                    row.merchant_id,
                    row.bucket_start,
                    row.currency,
                    row.processor,
                    row.decline_category,
                    row.funding,
                    row.control_group,
                    row.retryable,
                )
            ] = sums
    return found


@dataclass(frozen=True, slots=True)
class RollupDifference:
    """A rollup row that disagrees with its recomputation (None: the row is missing)."""

    key: RollupKey
    stored: Sums | None
    expected: Sums | None


async def rollup_differences(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> list[RollupDifference]:
    """Every difference between the rollup table and a recomputation from `payment`; empty
    when they agree. Reads every visible payment: a check, not a request path."""
    stored = await stored_rollups(session, merchant_ids)
    expected = await rollups_from_payments(session, merchant_ids)
    return [
        RollupDifference(key, stored.get(key), expected.get(key))
        for key in sorted(stored.keys() | expected.keys(), key=_sort_key)
        if stored.get(key) != expected.get(key)
    ]


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


__all__ = [
    "DIMENSIONS",
    "Granularity",
    "RecoveryStats",
    "StatsQuery",
    "load_stats",
    "recompute",
    "rollup_differences",
    "stats_query",
]
