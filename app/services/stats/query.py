"""Statistics requests: validated ranges, timezones and the series' local boundaries."""

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.errors import InvalidTimeRange, InvalidTimezone

MAX_POINTS = 1000


class Granularity(StrEnum):
    """The width of one point of the time series, in the query's timezone."""

    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


# The groups a statistics query sums: the range's total per currency, the series, the three
# breakdowns and the uplift's arms.
KINDS = ("total", "series", "decline_category", "processor", "funding", "arm")
BREAKDOWN_KINDS = ("decline_category", "processor", "funding")


@dataclass(frozen=True, slots=True)
class Selection:
    """What a request reads: the groups beside the total (`kinds`) and those whose time to
    recover is read (`histograms`: their median and 90th percentile). What it leaves out is
    neither summed nor built: a breakdown left out is empty, the series too, the uplift null."""

    kinds: frozenset[str] = frozenset(KINDS)
    histograms: frozenset[str] = frozenset(KINDS)

    def __post_init__(self) -> None:
        unknown = (self.kinds | self.histograms) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown statistics groups: {sorted(unknown)}")


EVERYTHING = Selection()


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """A validated request: the half-open range [start, end), the series grain and timezone,
    and what it reads."""

    start: datetime
    end: datetime
    granularity: Granularity
    timezone: str
    selection: Selection = EVERYTHING

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def stats_query(
    start: datetime,
    end: datetime,
    granularity: Granularity,
    timezone: str | None,
    selection: Selection = EVERYTHING,
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
    query = StatsQuery(start.astimezone(UTC), end.astimezone(UTC), granularity, name, selection)
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
    return list(_series_bounds(query))


@lru_cache(maxsize=64)
def _series_bounds(query: StatsQuery) -> tuple[datetime, ...]:
    """`series_bounds`, worked out once per query: a request validates its range, reads its
    whole days and builds its points from the same bounds."""
    zone = query.zone
    current = _local_floor(query.start, query.granularity, zone)
    bounds = [current.astimezone(UTC)]
    while bounds[-1] < query.end and len(bounds) <= MAX_POINTS + 1:
        current = _local_next(current, query.granularity, zone)
        bounds.append(current.astimezone(UTC))
    return tuple(bounds)


@dataclass(frozen=True, slots=True)
class WholeDays:
    """The local days (in the query's timezone) lying wholly within [start, end), each with
    the series point it falls in; together they cover [low, high) (low == high: none)."""

    days: tuple[date, ...]
    points: tuple[int, ...]
    low: datetime
    high: datetime


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def whole_days(query: StatsQuery) -> WholeDays:
    """The query's whole local days, in a row: each starts at its local midnight (as
    `series_bounds` counts it) and ends at the next day's, so a day's instants are exactly
    those whose local date is that day. A day whose midnight is not on its own date (no such
    zone today) ends the run; the rest of the range is read by the quarter hour."""
    zone = query.zone
    bounds = _series_bounds(query)
    one_day = timedelta(days=1)
    day = query.start.astimezone(zone).date()
    midnight = _midnight(day, zone)
    if midnight < query.start:
        day += one_day
        midnight = _midnight(day, zone)
    days: list[date] = []
    midnights: list[datetime] = []
    # Each day's midnight once: a day ends at the next day's.
    while (following := _midnight(day + one_day, zone)) <= query.end:
        if midnight.astimezone(zone).date() != day:
            break
        days.append(day)
        midnights.append(midnight)
        day += one_day
        midnight = following
    if not days:
        return WholeDays((), (), query.end, query.end)
    return WholeDays(
        tuple(days),
        tuple(bisect_right(bounds, m) for m in midnights),
        midnights[0],
        midnight,
    )


# How the month rollup stands in for a whole day (`WholeMonths.day_kinds`).
EDGE_DAY = 0  # in a partial month: read from the day rollup
SERIES_DAY = 1  # in a whole month spanning several series points: the series reads the day
COVERED_DAY = 2  # in a whole month within one series point: the month row is enough


@dataclass(frozen=True, slots=True)
class WholeMonths:
    """The local months (their first days) lying wholly within the query's whole days, each
    with the series point it falls in (None: its days fall in several points), and for each
    whole day (`WholeDays.days`, in order) how the month rollup stands in for it."""

    months: tuple[date, ...]
    points: tuple[int | None, ...]
    day_kinds: tuple[int, ...]


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def whole_months(whole: WholeDays) -> WholeMonths:
    """The whole local months of a run of whole days: from the first day of a month to the
    last, all of them in the run (its days are consecutive)."""
    if not whole.days:
        return WholeMonths((), (), ())
    first, last = whole.days[0], whole.days[-1]
    points_by_month: dict[date, set[int]] = {}
    for day, point in zip(whole.days, whole.points, strict=True):
        month = day.replace(day=1)
        if month >= first and _next_month(month) - timedelta(days=1) <= last:
            points_by_month.setdefault(month, set()).add(point)
    months = tuple(points_by_month)
    points = tuple(
        next(iter(found)) if len(found) == 1 else None for found in points_by_month.values()
    )
    single = {m for m, p in zip(months, points, strict=True) if p is not None}
    kinds = tuple(
        EDGE_DAY
        if day.replace(day=1) not in points_by_month
        else COVERED_DAY
        if day.replace(day=1) in single
        else SERIES_DAY
        for day in whole.days
    )
    return WholeMonths(months, points, kinds)
