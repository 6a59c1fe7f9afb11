"""Statistics figures: summed rollup measures, rates, quantiles, uplift, per currency."""

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from operator import add, attrgetter, itemgetter
from typing import Any

from app.enums import Actor
from app.models.stats import MEASURES, TTR_BUCKETS, TTR_EDGES_SECONDS
from app.services.stats.query import StatsQuery, series_bounds

MIN_ARM_SIZE = 30
Z_95 = 1.959963984540054
ACTORS = (Actor.PORTAL, Actor.PROCESSOR, Actor.BILLING_SYSTEM, Actor.CUSTOMER)


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
        return Sums(
            *map(add, _measures(self), _measures(other)),  # type: ignore[misc]
            ttr_histogram=tuple(map(add, self.ttr_histogram, other.ttr_histogram)),
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
_measures = attrgetter(*MEASURES)
# Each actor's recovered count and amount, in the order of ACTORS (read without the enum's
# slow attribute access on the request path).
_ACTOR_COUNTS = attrgetter(*(f"recovered_{a.value}_count" for a in ACTORS))
_ACTOR_AMOUNTS = attrgetter(*(f"recovered_{a.value}_amount" for a in ACTORS))
EMPTY: tuple[Sums, Sums] = (ZERO, ZERO)
# Where each figure's measure sits in a vector of summed measures (`RecoveryFigures.of_vectors`).
_FAILED_COUNT, _FAILED_AMOUNT = MEASURES.index("failed_count"), MEASURES.index("failed_amount")
_OPEN_COUNT, _OPEN_AMOUNT = MEASURES.index("open_count"), MEASURES.index("open_amount")
_RETRIES = MEASURES.index("recovered_retries")
_COUNT_AT = tuple(MEASURES.index(f"recovered_{a.value}_count") for a in ACTORS)
_AMOUNT_AT = tuple(MEASURES.index(f"recovered_{a.value}_amount") for a in ACTORS)
_COUNTS_OF, _AMOUNTS_OF = itemgetter(*_COUNT_AT), itemgetter(*_AMOUNT_AT)
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


class _DerivedFigures:
    """The figures derived from the base ones (rates, attempts per recovery, quantiles of the
    time to recover): the same formulas for `RecoveryFigures` and `MeasuredFigures`."""

    __slots__ = ()
    failed_count: int
    failed_amount: int
    eligible_count: int
    eligible_amount: int
    eligible_recovered_count: int
    eligible_recovered_amount: int
    recovered_count: int
    recovered_amount: int
    recovered_retries: int
    ttr_histogram: tuple[int, ...]

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
class RecoveryFigures(_DerivedFigures):
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
    # Derived from `recovered` once (several figures read them): not compared, not given.
    recovered_count: int = field(init=False, compare=False)
    recovered_amount: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recovered_count", sum([r.count for r in self.recovered]))
        object.__setattr__(self, "recovered_amount", sum([r.amount for r in self.recovered]))

    @classmethod
    def of(cls, eligible: Sums, never: Sums) -> "RecoveryFigures":
        both = eligible + never
        counts, amounts = _ACTOR_COUNTS(both), _ACTOR_AMOUNTS(both)
        return cls(
            failed_count=both.failed_count,
            failed_amount=both.failed_amount,
            eligible_count=eligible.failed_count,
            eligible_amount=eligible.failed_amount,
            recovered=tuple(map(ActorRecovery, ACTORS, counts, amounts)),
            eligible_recovered_count=sum(_ACTOR_COUNTS(eligible)),
            eligible_recovered_amount=sum(_ACTOR_AMOUNTS(eligible)),
            in_recovery_count=both.open_count,
            in_recovery_amount=both.open_amount,
            recovered_retries=both.recovered_retries,
            ttr_histogram=both.ttr_histogram,
        )

    @classmethod
    def of_vectors(cls, eligible: Sequence[int], both: Sequence[int]) -> "RecoveryFigures":
        """The figures from summed measures in the order of MEASURES: `eligible` those of the
        payments retryable at first failure, `both` every payment's followed by its histogram
        (what `of` computes, without building the sums)."""
        return cls(
            failed_count=both[_FAILED_COUNT],
            failed_amount=both[_FAILED_AMOUNT],
            eligible_count=eligible[_FAILED_COUNT],
            eligible_amount=eligible[_FAILED_AMOUNT],
            recovered=tuple(
                map(
                    ActorRecovery,
                    ACTORS,
                    [both[c] for c in _COUNT_AT],
                    [both[a] for a in _AMOUNT_AT],
                )
            ),
            eligible_recovered_count=sum([eligible[c] for c in _COUNT_AT]),
            eligible_recovered_amount=sum([eligible[a] for a in _AMOUNT_AT]),
            in_recovery_count=both[_OPEN_COUNT],
            in_recovery_amount=both[_OPEN_AMOUNT],
            recovered_retries=both[_RETRIES],
            ttr_histogram=tuple(both[len(MEASURES) :]),
        )


class MeasuredFigures(_DerivedFigures):
    """The figures of `RecoveryFigures.of_vectors`, each computed from the summed vectors
    when it is read: for a reader that wants a few of them (the API builds only the fields a
    request selects: a 90-day series in four currencies is hundreds of figures, of which a
    dashboard reads three fields each). Not compared: read its figures."""

    __slots__ = ("_both", "_eligible")

    def __init__(self, eligible: Sequence[int], both: Sequence[int]) -> None:
        self._eligible = eligible
        self._both = both

    @property
    def failed_count(self) -> int:  # type: ignore[override]
        return self._both[_FAILED_COUNT]

    @property
    def failed_amount(self) -> int:  # type: ignore[override]
        return self._both[_FAILED_AMOUNT]

    @property
    def eligible_count(self) -> int:  # type: ignore[override]
        return self._eligible[_FAILED_COUNT]

    @property
    def eligible_amount(self) -> int:  # type: ignore[override]
        return self._eligible[_FAILED_AMOUNT]

    @property
    def recovered(self) -> tuple[ActorRecovery, ...]:
        both = self._both
        return tuple(
            map(ActorRecovery, ACTORS, [both[c] for c in _COUNT_AT], [both[a] for a in _AMOUNT_AT])
        )

    @property
    def recovered_count(self) -> int:  # type: ignore[override]
        return sum(_COUNTS_OF(self._both))

    @property
    def recovered_amount(self) -> int:  # type: ignore[override]
        return sum(_AMOUNTS_OF(self._both))

    @property
    def eligible_recovered_count(self) -> int:  # type: ignore[override]
        return sum(_COUNTS_OF(self._eligible))

    @property
    def eligible_recovered_amount(self) -> int:  # type: ignore[override]
        return sum(_AMOUNTS_OF(self._eligible))

    @property
    def in_recovery_count(self) -> int:
        return self._both[_OPEN_COUNT]

    @property
    def in_recovery_amount(self) -> int:
        return self._both[_OPEN_AMOUNT]

    @property
    def recovered_retries(self) -> int:  # type: ignore[override]
        return self._both[_RETRIES]

    @property
    def ttr_histogram(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(self._both[len(MEASURES) :])


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


@dataclass(frozen=True, slots=True)
class DayRollupKey:
    """The key of one day rollup row: a local day and one value of one breakdown dimension."""

    merchant_id: uuid.UUID
    day: date
    currency: str
    retryable: bool
    dimension: str
    value: str


@dataclass(frozen=True, slots=True)
class MonthRollupKey:
    """The key of one month rollup row: a local month (its first day) and one value of one
    breakdown dimension."""

    merchant_id: uuid.UUID
    month: date
    currency: str
    retryable: bool
    dimension: str
    value: str


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
                return Arm(eligible.failed_count, sum(_ACTOR_COUNTS(eligible)))

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


# Summed measures of one group: those of its eligible payments (MEASURES), then those of all
# its payments (MEASURES and the histogram).
Vectors = tuple[Sequence[int], Sequence[int]]
# A group of the pivoted statistics query: (merchant or None, currency, dimension, value).
VectorKey = tuple[uuid.UUID | None, str, str, Any]
_ZERO_VECTORS: Vectors = ((0,) * len(MEASURES), (0,) * (len(MEASURES) + TTR_BUCKETS))


@dataclass(frozen=True, slots=True)
class CurrencyGroups:
    """One currency's groups as summed vectors, in the order and with the omissions of
    `CurrencyStats` (its figures not built yet: see `figures`)."""

    currency: str
    summary: Vectors
    series: tuple[tuple[datetime, Vectors], ...]
    by_decline_category: tuple[tuple[str, Vectors], ...]
    by_processor: tuple[tuple[str, Vectors], ...]
    by_card_funding: tuple[tuple[str, Vectors], ...]
    uplift: Uplift | None

    def figures(self) -> CurrencyStats:
        of_vectors = RecoveryFigures.of_vectors

        def breakdowns(found: tuple[tuple[str, Vectors], ...]) -> tuple[Breakdown, ...]:
            return tuple(Breakdown(value, of_vectors(*vectors)) for value, vectors in found)

        return CurrencyStats(
            currency=self.currency,
            summary=of_vectors(*self.summary),
            series=tuple(Point(start, of_vectors(*vectors)) for start, vectors in self.series),
            by_decline_category=breakdowns(self.by_decline_category),
            by_processor=breakdowns(self.by_processor),
            by_card_funding=breakdowns(self.by_card_funding),
            uplift=self.uplift,
        )


@dataclass(frozen=True, slots=True)
class StatsGroups:
    """A query's statistics as summed vectors per currency, ordered by currency code: what
    `RecoveryStats` holds, before its figures are built (see `figures`)."""

    query: StatsQuery
    currencies: tuple[CurrencyGroups, ...] = field(default=())

    def figures(self) -> RecoveryStats:
        return RecoveryStats(self.query, tuple(c.figures() for c in self.currencies))


def group_vectors(
    query: StatsQuery, groups: Mapping[VectorKey, Vectors], merchants: Iterable[uuid.UUID | None]
) -> dict[uuid.UUID | None, StatsGroups]:
    """Groups already split into eligible and all payments (one pair of vectors per group
    instead of one `Sums` per eligibility), arranged per merchant and currency as
    `assemble` arranges its figures; the series and uplift only when the query's selection
    reads them (else empty and null)."""
    bounds = series_bounds(query)
    zone = query.zone
    by_owner: dict[uuid.UUID | None, dict[str, dict[tuple[str, Any], Vectors]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for (owner, currency, dim, value), vectors in groups.items():
        by_owner[owner][currency][(dim, value)] = vectors
    kinds = query.selection.kinds
    starts = [bound.astimezone(zone) for bound in bounds[:-1]] if "series" in kinds else []
    breakdowns = _BREAKDOWNS & kinds
    result: dict[uuid.UUID | None, StatsGroups] = {}
    for owner in merchants:
        currencies = []
        for currency, dims in sorted(by_owner.get(owner, {}).items()):
            total = dims.get(("total", None), _ZERO_VECTORS)
            if total[1][_FAILED_COUNT] == 0:
                continue  # only rows whose payments were all deleted or moved
            found: dict[str, list[tuple[str, Vectors]]] = defaultdict(list)
            for (dim, value), vectors in dims.items():
                if dim in breakdowns and vectors[1][_FAILED_COUNT]:
                    found[dim].append((str(value), vectors))

            def arm(control: bool, dims: dict[tuple[str, Any], Vectors] = dims) -> Arm:
                eligible = dims.get(("arm", (True, control)), _ZERO_VECTORS)[0]
                return Arm(eligible[_FAILED_COUNT], sum([eligible[c] for c in _COUNT_AT]))

            currencies.append(
                CurrencyGroups(
                    currency=currency,
                    summary=total,
                    series=tuple(
                        (start, dims.get(("series", i), _ZERO_VECTORS))
                        for i, start in enumerate(starts, start=1)
                    ),
                    by_decline_category=_sorted(found["decline_category"]),
                    by_processor=_sorted(found["processor"]),
                    by_card_funding=_sorted(found["funding"]),
                    uplift=Uplift.of(arm(False), arm(True)) if "arm" in kinds else None,
                )
            )
        result[owner] = StatsGroups(query, tuple(currencies))
    return result


_BREAKDOWNS = frozenset(("decline_category", "processor", "funding"))


def _sorted(found: list[tuple[str, Vectors]]) -> tuple[tuple[str, Vectors], ...]:
    return tuple(sorted(found, key=itemgetter(0)))
