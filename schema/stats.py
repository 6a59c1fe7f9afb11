"""Recovery statistics types: figures per currency, time series, breakdowns and uplift."""

import uuid
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Self

import strawberry
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField

from app.enums import Actor, CardFunding, DeclineCategory, Processor
from app.models.stats import TTR_EDGES_SECONDS
from app.services.stats import figures as svc
from app.services.stats.query import Granularity, Selection
from resolvers import stats as stats_resolvers
from resolvers.context import Context
from schema.scalars import Long

Info = strawberry.Info[Context, None]
Selected = SelectedField | FragmentSpread | InlineFragment

strawberry.enum(
    Granularity,
    description="The width of one point of a statistics time series, in the query's timezone.",
)

_EDGES_HOURS = ", ".join(f"{e // 3600}" for e in TTR_EDGES_SECONDS)

FromArg = Annotated[
    datetime,
    strawberry.argument(
        name="from",
        description=(
            "Start of the range, inclusive, with a UTC offset. A payment counts when the "
            "quarter hour (UTC) of its first failure starts in [from, to)."
        ),
    ),
]
ToArg = Annotated[
    datetime, strawberry.argument(description="End of the range, exclusive, with a UTC offset.")
]
GranularityArg = Annotated[
    Granularity, strawberry.argument(description="Width of one point of the time series.")
]
TimezoneArg = Annotated[
    str | None,
    strawberry.argument(
        description=(
            "IANA timezone the series' days, weeks (from Monday) and months follow; UTC when "
            "null. An unknown name answers INVALID_TIMEZONE."
        )
    ),
]
STATS_DESCRIPTION = (
    "Recovery statistics of payments first failed in [from, to), per currency, served from "
    "rollups kept current as payments change. A reversed, empty or offset-less range, or one "
    "of more than 1000 points, answers INVALID_TIME_RANGE."
)


@strawberry.type(description="Recoveries brought about by one actor.")
class ActorRecovery:
    actor: Actor = strawberry.field(description="Who brought the money in.")
    count: int = strawberry.field(description="Payments recovered.")
    amount: Long = strawberry.field(description="Amount recovered, in minor units.")


@strawberry.type(
    description=(
        "The figures of one population, in one currency (docs/domain.md §3). Failed: payments that "
        "entered recovery. Eligible: failed minus those never retryable at first failure. "
        "Rates are null when their denominator is zero."
    )
)
class RecoveryFigures:
    failed_count: int = strawberry.field(description="Payments that entered recovery.")
    failed_amount: Long = strawberry.field(description="Their amount, in minor units.")
    eligible_count: int = strawberry.field(
        description="Failed payments retryable at their first failure."
    )
    eligible_amount: Long = strawberry.field(description="Their amount, in minor units.")
    recovered_count: int = strawberry.field(description="Payments recovered, by any actor.")
    recovered_amount: Long = strawberry.field(description="Amount recovered, in minor units.")
    recovered_by_actor: list[ActorRecovery] = strawberry.field(
        description="Recoveries by actor: portal, processor, billing system, customer (all four)."
    )
    recovery_rate_by_count: float | None = strawberry.field(
        description="Recovered ÷ failed, by count."
    )
    recovery_rate_by_amount: float | None = strawberry.field(
        description="Recovered ÷ failed, by amount."
    )
    eligible_recovery_rate_by_count: float | None = strawberry.field(
        description="Recovered eligible payments ÷ eligible payments, by count."
    )
    eligible_recovery_rate_by_amount: float | None = strawberry.field(
        description="Recovered eligible payments ÷ eligible payments, by amount."
    )
    attempts_per_recovery: float | None = strawberry.field(
        description=(
            "Attempts after the first failure, up to the recovery, per recovered payment "
            "(0 for a customer who paid before any retry)."
        )
    )
    median_time_to_recover_seconds: int | None = strawberry.field(
        description=(
            "Median time from first failure to recovery, in seconds. Approximate: read from a "
            f"histogram with edges at {_EDGES_HOURS} hours, interpolated linearly within the "
            "bucket; beyond the last edge, the last edge."
        )
    )
    p90_time_to_recover_seconds: int | None = strawberry.field(
        description="90th percentile of the time to recover, in seconds (approximate, as median)."
    )
    in_recovery_count: int = strawberry.field(
        description="Payments still in recovery (not yet in a terminal state)."
    )
    in_recovery_amount: Long = strawberry.field(
        description="Their amount still open, in minor units."
    )

    @classmethod
    def from_figures(cls, f: svc.MeasuredFigures, wanted: "Wanted" = None) -> Self:
        """The figures the API gives; with `wanted` (GraphQL names), only those are computed:
        the others, which the request does not read, hold their type's empty value (a
        90-day series in four currencies builds hundreds of figures, of a few fields each)."""
        computed, empty = _figure_plan(wanted)
        values = empty.copy()
        for name, get in computed:
            values[name] = get(f)
        return cls(**values)


# A figure's GraphQL name: its Python name, how it is computed, and its empty value. (Amounts
# are handed over as the ints they are: `Long` is a name for int, and calling it costs a call.)
_FIGURE_FIELDS: dict[str, tuple[str, Callable[[svc.MeasuredFigures], Any], Any]] = {
    "failedCount": ("failed_count", lambda f: f.failed_count, 0),
    "failedAmount": ("failed_amount", lambda f: f.failed_amount, Long(0)),
    "eligibleCount": ("eligible_count", lambda f: f.eligible_count, 0),
    "eligibleAmount": ("eligible_amount", lambda f: f.eligible_amount, Long(0)),
    "recoveredCount": ("recovered_count", lambda f: f.recovered_count, 0),
    "recoveredAmount": ("recovered_amount", lambda f: f.recovered_amount, Long(0)),
    "recoveredByActor": (
        "recovered_by_actor",
        lambda f: [
            ActorRecovery(actor=r.actor, count=r.count, amount=Long(r.amount)) for r in f.recovered
        ],
        (),
    ),
    "recoveryRateByCount": ("recovery_rate_by_count", lambda f: f.recovery_rate_by_count, None),
    "recoveryRateByAmount": ("recovery_rate_by_amount", lambda f: f.recovery_rate_by_amount, None),
    "eligibleRecoveryRateByCount": (
        "eligible_recovery_rate_by_count",
        lambda f: f.eligible_recovery_rate_by_count,
        None,
    ),
    "eligibleRecoveryRateByAmount": (
        "eligible_recovery_rate_by_amount",
        lambda f: f.eligible_recovery_rate_by_amount,
        None,
    ),
    "attemptsPerRecovery": ("attempts_per_recovery", lambda f: f.attempts_per_recovery, None),
    "medianTimeToRecoverSeconds": (
        "median_time_to_recover_seconds",
        lambda f: f.median_time_to_recover_seconds,
        None,
    ),
    "p90TimeToRecoverSeconds": (
        "p90_time_to_recover_seconds",
        lambda f: f.p90_time_to_recover_seconds,
        None,
    ),
    "inRecoveryCount": ("in_recovery_count", lambda f: f.in_recovery_count, 0),
    "inRecoveryAmount": ("in_recovery_amount", lambda f: f.in_recovery_amount, Long(0)),
}
# The figures' fields a request reads (GraphQL names); None: every one.
Wanted = frozenset[str] | None


@lru_cache(maxsize=256)
def _figure_plan(
    wanted: Wanted,
) -> tuple[tuple[tuple[str, Callable[[svc.MeasuredFigures], Any]], ...], dict[str, Any]]:
    """The fields to compute (Python name, how) and the empty values of the others."""
    chosen = _FIGURE_FIELDS.keys() if wanted is None else wanted & _FIGURE_FIELDS.keys()
    computed = tuple((_FIGURE_FIELDS[n][0], _FIGURE_FIELDS[n][1]) for n in sorted(chosen))
    empty = {p: e for n, (p, _, e) in _FIGURE_FIELDS.items() if n not in chosen}
    return computed, empty


@strawberry.type(description="One point of the time series: payments first failed in it.")
class RecoveryStatsPoint:
    start: datetime = strawberry.field(
        description="Start of the day, week or month, in the query's timezone."
    )
    figures: RecoveryFigures = strawberry.field(description="The point's figures.")


@strawberry.type(description="The figures of payments with one decline category.")
class DeclineCategoryRecovery:
    category: DeclineCategory = strawberry.field(description="Category of the first failure.")
    figures: RecoveryFigures = strawberry.field(description="Their figures.")


@strawberry.type(description="The figures of payments read from one processor.")
class ProcessorRecovery:
    processor: Processor = strawberry.field(description="The processor.")
    figures: RecoveryFigures = strawberry.field(description="Their figures.")


@strawberry.type(description="The figures of payments by the funding of their card.")
class CardFundingRecovery:
    funding: CardFunding = strawberry.field(
        description="The card's funding; UNKNOWN also for payments without a known card."
    )
    figures: RecoveryFigures = strawberry.field(description="Their figures.")


@strawberry.type(description="One side of the uplift comparison.")
class RecoveryArm:
    eligible_count: int = strawberry.field(description="Eligible payments in the group.")
    recovered_count: int = strawberry.field(description="Of those, recovered by any actor.")
    recovery_rate: float = strawberry.field(description="Recovered ÷ eligible.")

    @classmethod
    def from_arm(cls, arm: svc.Arm) -> Self:
        return cls(
            eligible_count=arm.eligible_count,
            recovered_count=arm.recovered_count,
            recovery_rate=arm.rate or 0.0,
        )


@strawberry.type(
    description=(
        "Recovery rate of the model-driven policy minus the control group's, over eligible "
        "payments of merchants that ran the model in the range (at least one model decision): "
        "the control is the retry engine's stable ~10% share, kept on the fixed schedule; "
        "treatment is every other payment (intention to treat). The 95% interval is Newcombe's "
        "hybrid score interval (Wilson intervals of both rates). Null when either group has "
        f"fewer than {svc.MIN_ARM_SIZE} eligible payments."
    )
)
class RecoveryUplift:
    treatment: RecoveryArm = strawberry.field(description="Payments the model decided.")
    control: RecoveryArm = strawberry.field(description="The fixed-schedule control group.")
    difference: float = strawberry.field(
        description="Treatment rate minus control rate (a share: 0.05 is 5 points)."
    )
    lower: float = strawberry.field(description="Lower bound of the interval.")
    upper: float = strawberry.field(description="Upper bound of the interval.")
    confidence_level: float = strawberry.field(description="The interval's level: 0.95.")

    @classmethod
    def from_uplift(cls, u: svc.Uplift) -> Self:
        return cls(
            treatment=RecoveryArm.from_arm(u.treatment),
            control=RecoveryArm.from_arm(u.control),
            difference=u.difference,
            lower=u.lower,
            upper=u.upper,
            confidence_level=u.confidence,
        )


@strawberry.type(description="Every statistic of one currency; amounts are never summed across.")
class CurrencyRecoveryStats:
    currency: str = strawberry.field(description="ISO 4217 code.")
    summary: RecoveryFigures = strawberry.field(description="The whole range.")
    series: list[RecoveryStatsPoint] = strawberry.field(
        description="One point per day, week or month of the range, empty ones included."
    )
    by_decline_category: list[DeclineCategoryRecovery] = strawberry.field(
        description="By decline category of the first failure."
    )
    by_processor: list[ProcessorRecovery] = strawberry.field(description="By processor.")
    by_card_funding: list[CardFundingRecovery] = strawberry.field(description="By card funding.")
    uplift: RecoveryUplift | None = strawberry.field(
        description="The model-driven policy against the control group."
    )

    @classmethod
    def from_stats(cls, c: svc.CurrencyGroups, wanted: "FiguresWanted | None" = None) -> Self:
        """Each figure built from its group's summed vectors; `wanted`: the figures' fields
        the request reads, per group (see `figures_wanted`); every field of every figure
        without it."""

        def of(kind: str, vectors: svc.Vectors) -> RecoveryFigures:
            return RecoveryFigures.from_figures(
                svc.MeasuredFigures(*vectors), None if wanted is None else wanted.get(kind)
            )

        return cls(
            currency=c.currency,
            summary=of("total", c.summary),
            series=[
                RecoveryStatsPoint(start=start, figures=of("series", vectors))
                for start, vectors in c.series
            ],
            by_decline_category=[
                DeclineCategoryRecovery(
                    category=DeclineCategory(value), figures=of("decline_category", vectors)
                )
                for value, vectors in c.by_decline_category
            ],
            by_processor=[
                ProcessorRecovery(processor=Processor(value), figures=of("processor", vectors))
                for value, vectors in c.by_processor
            ],
            by_card_funding=[
                CardFundingRecovery(funding=CardFunding(value), figures=of("funding", vectors))
                for value, vectors in c.by_card_funding
            ],
            uplift=None if c.uplift is None else RecoveryUplift.from_uplift(c.uplift),
        )


@strawberry.type(description="Recovery statistics over a range, one entry per currency.")
class RecoveryStats:
    from_: datetime = strawberry.field(name="from", description="Start of the range (UTC).")
    to: datetime = strawberry.field(description="End of the range, exclusive (UTC).")
    granularity: Granularity = strawberry.field(description="Width of a series point.")
    timezone: str = strawberry.field(description="Timezone of the series.")
    currencies: list[CurrencyRecoveryStats] = strawberry.field(
        description="Per currency seen in the range, by currency code."
    )

    @classmethod
    def from_stats(cls, s: svc.StatsGroups, wanted: "FiguresWanted | None" = None) -> Self:
        return cls(
            from_=s.query.start,
            to=s.query.end,
            granularity=s.query.granularity,
            timezone=s.query.timezone,
            currencies=[CurrencyRecoveryStats.from_stats(c, wanted) for c in s.currencies],
        )


# The fields of `CurrencyRecoveryStats` that read a group of the query, and where their figures
# sit (the summary is itself figures; the others hold them under `figures`).
_GROUP_FIELDS = {
    "summary": ("total", False),
    "series": ("series", True),
    "byDeclineCategory": ("decline_category", True),
    "byProcessor": ("processor", True),
    "byCardFunding": ("funding", True),
    "uplift": ("arm", False),
}
_QUANTILE_FIELDS = frozenset(("medianTimeToRecoverSeconds", "p90TimeToRecoverSeconds"))


def _fields(selections: list[Selected]) -> dict[str, list[Selected]]:
    """The fields selected (fragments flattened), each with every selection made under it."""
    found: dict[str, list[Selected]] = {}
    for node in selections:
        if isinstance(node, SelectedField):
            found.setdefault(node.name, []).extend(node.selections)
        else:
            for name, under in _fields(node.selections).items():
                found.setdefault(name, []).extend(under)
    return found


# Per group kind (`Selection`'s), the fields of its figures the request reads (GraphQL names);
# a kind left out reads none.
FiguresWanted = dict[str, frozenset[str]]


def _currencies(info: Info) -> list[Selected]:
    stats = _fields(info.selected_fields).get(info.field_name, [])
    return _fields(stats).get("currencies", [])


def figures_wanted(info: Info) -> FiguresWanted:
    """The fields of each group's figures the request's `recoveryStats` selection reads
    (fragments included)."""
    found: FiguresWanted = {}
    for name, under in _fields(_currencies(info)).items():
        if name not in _GROUP_FIELDS or name == "uplift":
            continue
        kind, nested = _GROUP_FIELDS[name]
        figures = _fields(under).get("figures", []) if nested else under
        found[kind] = frozenset(_fields(figures))
    return found


def selection(info: Info) -> Selection:
    """The groups the request's `recoveryStats` selection reads (see `Selection`)."""
    kinds, histograms = {"total"}, set()
    for name, under in _fields(_currencies(info)).items():
        if name not in _GROUP_FIELDS:
            continue
        kind, nested = _GROUP_FIELDS[name]
        kinds.add(kind)
        figures = _fields(under).get("figures", []) if nested else under
        if _QUANTILE_FIELDS & _fields(figures).keys():
            histograms.add(kind)
    return Selection(frozenset(kinds), frozenset(histograms))


async def merchant_recovery_stats(
    info: Info,
    merchant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    timezone: str | None,
) -> RecoveryStats:
    found = await stats_resolvers.for_merchant(
        info.context,
        merchant_id,
        start=start,
        end=end,
        granularity=granularity,
        timezone=timezone,
        selection=selection(info),
    )
    return RecoveryStats.from_stats(found, figures_wanted(info))


async def viewer_recovery_stats(
    info: Info, start: datetime, end: datetime, granularity: Granularity, timezone: str | None
) -> RecoveryStats:
    found = await stats_resolvers.for_viewer(
        info.context,
        start=start,
        end=end,
        granularity=granularity,
        timezone=timezone,
        selection=selection(info),
    )
    return RecoveryStats.from_stats(found, figures_wanted(info))


__all__ = [
    "STATS_DESCRIPTION",
    "FromArg",
    "Granularity",
    "GranularityArg",
    "RecoveryStats",
    "TimezoneArg",
    "ToArg",
    "merchant_recovery_stats",
    "viewer_recovery_stats",
]
