"""Statistics served from the rollup tables: one statement per request."""

import uuid
from collections.abc import Sequence
from datetime import date
from functools import cache
from operator import add
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models.merchant import Merchant
from app.models.stats import (
    DAY_DIMENSIONS,
    MEASURES,
    TTR_BUCKETS,
    RecoveryDayRollup,
    RecoveryDayZone,
    RecoveryMonthRollup,
    RecoveryMonthZone,
    RecoveryRollup,
)
from app.services.stats.figures import (
    DayRollupKey,
    MonthRollupKey,
    RecoveryStats,
    RollupKey,
    StatsGroups,
    Sums,
    VectorKey,
    Vectors,
    group_vectors,
)
from app.services.stats.query import (
    BREAKDOWN_KINDS,
    EDGE_DAY,
    KINDS,
    SERIES_DAY,
    Selection,
    StatsQuery,
    WholeDays,
    WholeMonths,
    series_bounds,
    whole_days,
    whole_months,
)


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
# GROUPING(idx, model_merchant, value) of the day rollup's control-group sets.
_CONTROL_TOTAL, _CONTROL_SERIES, _CONTROL_ARM = 0b111, 0b011, 0b100
_CONTROL_KINDS = {_CONTROL_TOTAL: "total", _CONTROL_SERIES: "series", _CONTROL_ARM: "arm"}
CONTROL_DIMENSION = DAY_DIMENSIONS[0]


def _zeroed(total: Any) -> Any:
    """A sum as bigint, 0 over no rows (a bigint column's `sum` is numeric, read back as a
    slower Decimal)."""
    return sa.func.coalesce(sa.cast(total, sa.BigInteger), 0)


def _hist_sums(column: Any) -> list[Any]:
    """The element-wise sums of a histogram column (plain `sum`s: the array aggregate costs
    tens of microseconds a row)."""
    return [_zeroed(sa.func.sum(column[i + 1])) for i in range(TTR_BUCKETS)]


def _bytewise(column: Any) -> Any:
    """A text key sorted and grouped byte by byte (the "C" collation): the statement's groups
    are the same, and sorting them does not call the locale's comparison."""
    return column.collate("C")


def _combined(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else sa.union_all(*parts)


def _text(value: Any = None) -> Any:
    return sa.cast(sa.null(), sa.Text) if value is None else sa.cast(value, sa.Text)


@cache
def _statement(
    per_merchant: bool,
    with_ids: bool,
    head: bool,
    tail: bool,
    days_present: bool,
    months_present: bool,
    selection: Selection,
) -> Any:
    """The statistics statement of one shape, its values left as parameters (built once:
    the expression costs milliseconds to build). `head`/`tail`: the range has a partial day
    before/after its whole days; `days_present`: it has whole days; `months_present`: whole
    local months among them (read from the month rollup). The day and month rows of a
    breakdown the selection leaves out are not read, and histograms no selected group reads
    are not summed (zeros in their place)."""
    r, d, z = RecoveryRollup, RecoveryDayRollup, RecoveryDayZone
    mo, mz = RecoveryMonthRollup, RecoveryMonthZone
    ids = sa.bindparam("ids", type_=postgresql.ARRAY(sa.Uuid))
    moment = sa.DateTime(timezone=True)
    start, end = sa.bindparam("start", type_=moment), sa.bindparam("end", type_=moment)
    low, high = sa.bindparam("low", type_=moment), sa.bindparam("high", type_=moment)

    def mine(column: Any) -> list[Any]:
        return [column == sa.any_(ids)] if with_ids else []

    zone = sa.bindparam("zone", type_=sa.String)
    day_merchants = sa.select(col(z.merchant_id)).where(
        col(z.timezone) == zone, *mine(col(z.merchant_id))
    )
    bounds_param = sa.bindparam("bounds", type_=postgresql.ARRAY(moment))
    quarter_columns = [
        col(r.merchant_id),
        _bytewise(col(r.currency)).label("currency"),
        sa.func.width_bucket(col(r.bucket_start), bounds_param).label("idx"),
        _bytewise(col(r.decline_category)).label("decline_category"),
        _bytewise(col(r.processor)).label("processor"),
        _bytewise(col(r.funding)).label("funding"),
        col(r.control_group),
        col(r.retryable),
        *(getattr(r, m) for m in MEASURES),
        col(r.ttr_histogram),
    ]

    def quarter(since: Any, until: Any, *where: Any) -> Any:
        return sa.select(*quarter_columns).where(
            col(r.bucket_start) >= since,
            col(r.bucket_start) < until,
            *mine(col(r.merchant_id)),
            *where,
        )

    edges = [(start, low, head), (high, end, tail)]
    parts = [quarter(since, until) for since, until, present in edges if present]
    if days_present:
        everyone = sa.select(sa.func.unnest(ids)) if with_ids else sa.select(col(Merchant.id))
        parts.append(quarter(low, high, col(r.merchant_id).in_(everyone.except_(day_merchants))))
    fine = _combined(parts).cte("fine")
    # The breakdowns the selection reads, and the control group's (total, series, arms).
    chosen = [kind for kind in BREAKDOWN_KINDS if kind in selection.kinds]
    dimensions = [CONTROL_DIMENSION, *chosen]
    # Merchants whose month rows are kept in the query's zone (and whose day rows are too).
    month_merchants = sa.select(col(mz.merchant_id)).where(
        col(mz.timezone) == zone, col(mz.merchant_id).in_(day_merchants)
    )

    def unnested(name: str, *columns: tuple[str, Any]) -> Any:
        arrays = [sa.bindparam(f"{name}_{c}", type_=postgresql.ARRAY(t)) for c, t in columns]
        return (
            sa.func.unnest(*arrays).table_valued(*(c for c, _ in columns)).render_derived(name=name)
        )

    def day_part(name: str, merchants: Any, wanted: list[str], series: bool, rest: bool) -> Any:
        """The day rows of the days listed under `name`, for `merchants`, of the dimensions
        `wanted`: counted in the series and/or the rest (total, arms, breakdowns)."""
        w = unnested(name, ("day", sa.Date), ("idx", sa.Integer))
        return (
            sa.select(
                col(d.merchant_id),
                _bytewise(col(d.currency)).label("currency"),
                col(d.retryable),
                _bytewise(col(d.dimension)).label("dimension"),
                _bytewise(col(d.value)).label("value"),
                w.c.idx,
                sa.literal(series).label("series"),
                sa.literal(rest).label("rest"),
                *(getattr(d, m) for m in MEASURES),
                col(d.ttr_histogram),
            )
            .join_from(d, w, col(d.day) == w.c.day)
            .where(
                col(d.merchant_id).in_(merchants),
                col(d.day) >= sa.bindparam(f"{name}_first", type_=sa.Date),
                col(d.day) <= sa.bindparam(f"{name}_last", type_=sa.Date),
                col(d.dimension).in_(wanted) if len(wanted) > 1 else col(d.dimension) == wanted[0],
            )
        )

    # The days of the partial months at the range's edges: every dimension read.
    day_parts = [day_part("edge", day_merchants, dimensions, True, True)]
    if months_present:
        # The days of whole months, for a merchant without month rows (yet): as edge days.
        day_parts.append(
            day_part("inner", day_merchants.except_(month_merchants), dimensions, True, True)
        )
        if "series" in selection.kinds:
            # A month spanning several series points: the series reads its control group's days.
            day_parts.append(day_part("split", month_merchants, [CONTROL_DIMENSION], True, False))
        mw = unnested("whole", ("month", sa.Date), ("idx", sa.Integer))
        day_parts.append(
            sa.select(
                col(mo.merchant_id),
                _bytewise(col(mo.currency)).label("currency"),
                col(mo.retryable),
                _bytewise(col(mo.dimension)).label("dimension"),
                _bytewise(col(mo.value)).label("value"),
                mw.c.idx,
                mw.c.idx.is_not(None).label("series"),
                sa.true().label("rest"),
                *(getattr(mo, m) for m in MEASURES),
                col(mo.ttr_histogram),
            )
            .join_from(mo, mw, col(mo.month) == mw.c.month)
            .where(
                col(mo.merchant_id).in_(month_merchants),
                col(mo.month) >= sa.bindparam("whole_first", type_=sa.Date),
                col(mo.month) <= sa.bindparam("whole_last", type_=sa.Date),
                col(mo.dimension).in_(dimensions),
            )
        )
    days = _combined(day_parts).cte("days")
    model_counts = sa.union_all(
        sa.select(fine.c.merchant_id, fine.c.model_count),
        sa.select(days.c.merchant_id, days.c.model_count).where(
            days.c.dimension == CONTROL_DIMENSION, days.c.rest
        ),
    ).subquery()
    model_merchants = (
        sa.select(model_counts.c.merchant_id)
        .group_by(model_counts.c.merchant_id)
        .having(sa.func.sum(model_counts.c.model_count) > 0)
    )

    def measured(t: Any, *kinds: str, keep: Any = None) -> list[Any]:
        """The eligible payments' sums, then every payment's with the histogram's (see
        `Vectors`), each an array: the two eligibilities in one row of the group. The
        histogram is summed when the selection reads it for one of `kinds` (and, given
        `keep`, shown where `keep` holds: zeros elsewhere, as where it is not summed)."""
        eligible = [_zeroed(sa.func.sum(t.c[m]).filter(t.c.retryable)) for m in MEASURES]
        histogram = (
            _hist_sums(t.c.ttr_histogram)
            if selection.histograms.intersection(kinds)
            else [sa.literal_column("0")] * TTR_BUCKETS
        )
        if keep is not None:
            histogram = [sa.case((keep, h), else_=0) for h in histogram]
        both = [_zeroed(sa.func.sum(t.c[m])) for m in MEASURES] + histogram
        # Two arrays rather than 40-odd columns: the driver decodes an array in one piece.
        # Read back as the driver decodes them (no per-element result processing).
        return [sa.type_coerce(postgresql.array(v), sa.types.NullType()) for v in (eligible, both)]

    # Quarter hours: grouping sets over the dimensions.
    c = fine.c
    model_flag = c.merchant_id.in_(model_merchants).label("model_merchant")
    dims = [c.idx, c.decline_category, c.processor, c.funding, model_flag, c.control_group]
    owner = [c.merchant_id] if per_merchant else []
    base = [c.currency, *owner]
    sets = [sa.tuple_(*base)] + [
        sa.tuple_(*base, *x) for x in ([c.idx], [c.decline_category], [c.processor], [c.funding])
    ]
    sets.append(sa.tuple_(*base, model_flag, c.control_group))
    fine_groups = sa.select(
        sa.literal(0).label("part"),
        c.currency,
        c.merchant_id if per_merchant else sa.cast(sa.null(), sa.Uuid),
        sa.func.grouping(*dims).label("bits"),
        c.idx,
        c.decline_category,
        c.processor,
        c.funding,
        model_flag,
        c.control_group,
        _text(),
        _text(),
        *measured(
            fine,
            *KINDS,
            keep=sa.func.grouping(*dims).in_(
                [_grouping_bits(kind) for kind in sorted(selection.histograms)]
            ),
        ),
    ).group_by(sa.func.grouping_sets(*sets))
    # Whole days and months: the control group's rows give the total, the series (day rows,
    # and month rows within one point) and the arms; each row counts once in the total and arms
    # (`rest`), and once in the series (`series`).
    k = days.c
    day_owner = [k.merchant_id] if per_merchant else []
    day_base = [k.currency, *day_owner]
    day_flag = k.merchant_id.in_(model_merchants).label("model_merchant")
    owner_column = k.merchant_id if per_merchant else sa.cast(sa.null(), sa.Uuid)
    control = k.dimension == CONTROL_DIMENSION

    def control_select(bits: int, idx: Any, flag: Any, value: Any, kind: str) -> Any:
        return sa.select(
            sa.literal(1).label("part"),
            k.currency,
            owner_column,
            sa.literal(bits),
            idx,
            _text(),
            _text(),
            _text(),
            flag,
            value,
            _text(),
            _text(),
            *measured(days, kind),
        )

    no_flag = sa.cast(sa.null(), sa.Boolean)
    groups: list[Any] = [
        fine_groups,
        control_select(_CONTROL_TOTAL, sa.cast(sa.null(), sa.Integer), no_flag, no_flag, "total")
        .where(control, k.rest)
        .group_by(*day_base),
        control_select(
            _CONTROL_ARM, sa.cast(sa.null(), sa.Integer), day_flag, k.value == "true", "arm"
        )
        .where(control, k.rest)
        .group_by(*day_base, day_flag, k.value),
    ]
    if "series" in selection.kinds:
        groups.append(
            control_select(_CONTROL_SERIES, k.idx, no_flag, no_flag, "series")
            .where(control, k.series)
            .group_by(*day_base, k.idx)
        )
    # The other dimensions the selection reads: one group per value.
    if chosen:
        groups.append(
            sa.select(
                sa.literal(2).label("part"),
                k.currency,
                owner_column,
                sa.literal(0),
                sa.cast(sa.null(), sa.Integer),
                _text(),
                _text(),
                _text(),
                no_flag,
                no_flag,
                _text(k.dimension),
                _text(k.value),
                *measured(
                    days,
                    *chosen,
                    keep=k.dimension.in_(sorted(selection.histograms.intersection(chosen))),
                ),
            )
            .where(k.dimension.in_(chosen), k.rest)
            .group_by(*day_base, k.dimension, k.value)
        )
    return sa.union_all(*groups)


def _day_parameters(whole: WholeDays, months: WholeMonths, today: date) -> dict[str, Any]:
    """The days (with their series points) each day part of the statement reads, and the
    whole months, as arrays with their first and last values."""
    listed: dict[str, list[tuple[date, int | None]]] = {
        "edge": [],
        "inner": [],
        "split": [],
        "whole": list(zip(months.months, months.points, strict=True)),
    }
    for day, point, kind in zip(whole.days, whole.points, months.day_kinds, strict=True):
        listed["edge" if kind == EDGE_DAY else "inner"].append((day, point))
        if kind == SERIES_DAY:
            listed["split"].append((day, point))
    found: dict[str, Any] = {}
    for name, pairs in listed.items():
        found[f"{name}_{'month' if name == 'whole' else 'day'}"] = [p[0] for p in pairs]
        found[f"{name}_idx"] = [p[1] for p in pairs]
        found[f"{name}_first"] = pairs[0][0] if pairs else today
        found[f"{name}_last"] = pairs[-1][0] if pairs else today
    return found


async def load_stats(
    session: AsyncSession,
    query: StatsQuery,
    *,
    merchant_ids: Sequence[uuid.UUID] | None,
    per_merchant: bool,
) -> dict[uuid.UUID | None, RecoveryStats]:
    """The statistics of `load_stat_groups`, their figures built."""
    found = await load_stat_groups(
        session, query, merchant_ids=merchant_ids, per_merchant=per_merchant
    )
    return {owner: groups.figures() for owner, groups in found.items()}


async def load_stat_groups(
    session: AsyncSession,
    query: StatsQuery,
    *,
    merchant_ids: Sequence[uuid.UUID] | None,
    per_merchant: bool,
) -> dict[uuid.UUID | None, StatsGroups]:
    """The statistics from the rollups in one statement, as summed vectors per group (the
    figures built by the reader: all of them by `StatsGroups.figures`, or one by one through
    `MeasuredFigures`), within the session's scope and,
    when given, `merchant_ids`. `per_merchant`: one result per merchant id given, else one for
    them all under the key None. A payment counts when the quarter hour (UTC) of its first
    failure starts in [start, end).

    The whole local months of the range come from the month rollup and the other whole days
    from the day rollup, for merchants whose rollups are kept in the query's timezone (a daily
    or weekly series still reads the control group's day rows of a whole month); the partial
    days at its edges, and every day of other merchants, from the quarter-hour rollup
    (grouping sets). The parts' groups are added.
    Only the groups and histograms `query.selection` reads are summed."""
    bounds = series_bounds(query)
    whole = whole_days(query)
    months = whole_months(whole)
    today = query.start.date()
    parameters: dict[str, Any] = {
        "ids": None if merchant_ids is None else sorted(merchant_ids),
        "start": query.start,
        "end": query.end,
        "low": whole.low,
        "high": whole.high,
        "zone": query.timezone,
        "bounds": bounds,
        **_day_parameters(whole, months, today),
    }
    statement = _statement(
        per_merchant,
        merchant_ids is not None,
        query.start < whole.low,
        whole.high < query.end,
        bool(whole.days),
        bool(months.months),
        query.selection,
    )
    groups: dict[VectorKey, Vectors] = {}
    for row in (await session.execute(statement, parameters)).all():
        part, currency, merchant, bits = row[:4]
        idx, category, processor, funding, model_merchant, control, dimension, value = row[4:12]
        kind: str
        if part == 0:
            kind = _KIND_BY_BITS[bits]
            found: Any = {
                "total": None,
                "series": idx,
                "decline_category": category,
                "processor": processor,
                "funding": funding,
                "arm": (model_merchant, control),
            }[kind]
        elif part == 1:
            kind = _CONTROL_KINDS[bits]
            found = {"total": None, "series": idx, "arm": (model_merchant, control)}[kind]
        else:
            kind, found = dimension, value
        key = (merchant if per_merchant else None, currency, kind, found)
        vectors: Vectors = (row[12], row[13])
        if key in groups:
            # The same group from the quarter hours and the days (edge days, other zones).
            held = groups[key]
            vectors = (
                tuple(map(add, held[0], vectors[0])),
                tuple(map(add, held[1], vectors[1])),
            )
        groups[key] = vectors
    owners: list[uuid.UUID | None] = list(merchant_ids or []) if per_merchant else [None]
    return group_vectors(query, groups, owners)


_Rollup = type[RecoveryRollup] | type[RecoveryDayRollup] | type[RecoveryMonthRollup]


async def _nonzero_rows(
    session: AsyncSession, model: _Rollup, merchant_ids: Sequence[uuid.UUID] | None
) -> list[tuple[Any, Sums]]:
    """A rollup's rows the session may see with their sums, without rows whose sums fell back
    to zero."""
    statement = sa.select(model)
    if merchant_ids is not None:
        statement = statement.where(col(model.merchant_id).in_(sorted(merchant_ids)))
    found: list[tuple[Any, Sums]] = []
    rows: Sequence[Any] = (await session.execute(statement)).scalars().all()
    for row in rows:
        sums = Sums.of([getattr(row, m) for m in MEASURES], row.ttr_histogram)
        if not sums.is_zero:
            found.append((row, sums))
    return found


async def stored_rollups(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[RollupKey, Sums]:
    """The quarter-hour rollup rows the session may see, without rows whose sums fell back to
    zero."""
    return {
        RollupKey(
            row.merchant_id,
            row.bucket_start,
            row.currency,
            row.processor,
            row.decline_category,
            row.funding,
            row.control_group,
            row.retryable,
        ): sums
        for row, sums in await _nonzero_rows(session, RecoveryRollup, merchant_ids)
    }


async def stored_day_rollups(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[DayRollupKey, Sums]:
    """The day rollup rows the session may see, without rows whose sums fell back to zero."""
    return {
        DayRollupKey(
            row.merchant_id, row.day, row.currency, row.retryable, row.dimension, row.value
        ): sums
        for row, sums in await _nonzero_rows(session, RecoveryDayRollup, merchant_ids)
    }


async def stored_month_rollups(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[MonthRollupKey, Sums]:
    """The month rollup rows the session may see, without rows whose sums fell back to zero."""
    return {
        MonthRollupKey(
            row.merchant_id, row.month, row.currency, row.retryable, row.dimension, row.value
        ): sums
        for row, sums in await _nonzero_rows(session, RecoveryMonthRollup, merchant_ids)
    }


async def _zones(
    session: AsyncSession,
    model: type[RecoveryDayZone] | type[RecoveryMonthZone],
    merchant_ids: Sequence[uuid.UUID] | None,
) -> dict[uuid.UUID, str]:
    statement = sa.select(col(model.merchant_id), col(model.timezone))
    if merchant_ids is not None:
        statement = statement.where(col(model.merchant_id).in_(sorted(merchant_ids)))
    return {row[0]: row[1] for row in (await session.execute(statement)).all()}


async def day_zones(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, str]:
    """The time zone each merchant's day rollups are kept in (merchants without: none)."""
    return await _zones(session, RecoveryDayZone, merchant_ids)


async def month_zones(
    session: AsyncSession, merchant_ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, str]:
    """The time zone each merchant's month rollups are kept in (merchants without: none)."""
    return await _zones(session, RecoveryMonthZone, merchant_ids)
