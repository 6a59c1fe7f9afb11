"""Fixed and decline-aware retry schedules that merchants would otherwise use."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ml import rules, taxonomy, timeutil
from ml.engine import Planner
from ml.records import FailureRecords

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

FIXED_SCHEDULES: dict[str, tuple[float, ...]] = {
    "days_1_3_5_7": (1.0, 3.0, 5.0, 7.0),
    "4_in_14_days": (1.0, 3.0, 7.0, 14.0),
    "8_in_14_days": (1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 11.0, 14.0),
    "7_in_28_days": (4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0),
}
REFERENCE_SCHEDULE = "4_in_14_days"
# Retries closer than this to the previous one are pushed back: same-day repeats annoy issuers.
MIN_GAP_HOURS = 1.0


def _last(prev: F64, failed_at: F64) -> F64:
    stacked = np.concatenate([failed_at[:, None], prev], axis=1)
    out: F64 = np.nanmax(stacked, axis=1)
    return out


def table_planner(records: FailureRecords, times: F64) -> Planner:
    """Planner that reads retry k of each failure from a precomputed (n, K) table of times.

    Hard declines are skipped, advice delays honoured, and a retry is never closer than
    MIN_GAP_HOURS to the previous one.
    """
    ok = rules.retryable(records)
    nb = rules.not_before(records)

    def plan(k: int, rows: I64, prev: F64) -> F64:
        if k >= times.shape[1]:
            return np.full(rows.size, np.nan)
        f0 = records.failed_at[rows]
        t = np.maximum(times[rows, k], nb[rows])
        t = np.maximum(t, _last(prev, f0) + MIN_GAP_HOURS * timeutil.HOUR)
        out: F64 = np.where(ok[rows], t, np.nan)
        return out

    return plan


def fixed_times(records: FailureRecords, days: tuple[float, ...]) -> F64:
    """Retry times at fixed day offsets from the decline."""
    out: F64 = records.failed_at[:, None] + np.asarray(days)[None, :] * timeutil.DAY
    return out


def fixed_planner(records: FailureRecords, days: tuple[float, ...]) -> Planner:
    """Retry at fixed offsets from the decline; skip hard declines, honour advice delays."""
    return table_planner(records, fixed_times(records, days))


def _next_local(t: F64, tz: npt.NDArray[np.int16], hour: float) -> F64:
    """The first time at or after t that is `hour` o'clock local."""
    local = timeutil.local_seconds(t, tz)
    day_start = np.floor(local / timeutil.DAY) * timeutil.DAY
    target = day_start + hour * timeutil.HOUR
    target = np.where(target < local, target + timeutil.DAY, target)
    out: F64 = target - tz.astype(np.float64) * 60.0
    return out


def _common_paydays(t0: F64, tz: npt.NDArray[np.int16], count: int) -> F64:
    """The next `count` Fridays, 1sts and 15ths after t0 (local days), as local 09:00 times."""
    start = timeutil.local_day(timeutil.local_seconds(t0, tz)) + 1
    days = start[:, None] + np.arange(0, 21)[None, :]
    wd = timeutil.weekday(days)
    dom = timeutil.day_of_month(days)
    hit = (wd == 4) | (dom == 1) | (dom == 15)
    # Rank hits by day; take the first `count` of them per row.
    order = np.where(hit, days, np.iinfo(np.int64).max)
    chosen = np.sort(order, axis=1)[:, :count]
    local = chosen.astype(np.float64) * timeutil.DAY + 9.0 * timeutil.HOUR
    out: F64 = local - tz.astype(np.float64)[:, None] * 60.0
    return out


def decline_aware_times(records: FailureRecords, horizon_days: float = 14.0) -> F64:
    """A rule set by decline category, as a careful merchant would configure it (4 retries)."""
    cat = records.category
    f0 = records.failed_at
    hours = np.array([24.0, 72.0, 168.0, 336.0])
    plan = f0[:, None] + hours[None, :] * timeutil.HOUR
    proc = cat == taxonomy.CATEGORIES.index("processing_error")
    plan[proc] = f0[proc, None] + np.array([2.0, 24.0, 72.0, 168.0]) * timeutil.HOUR
    vel = cat == taxonomy.CATEGORIES.index("velocity_exceeded")
    plan[vel] = f0[vel, None] + np.array([25.0, 72.0, 168.0, 336.0]) * timeutil.HOUR
    funds = np.flatnonzero(cat == taxonomy.CATEGORIES.index("insufficient_funds"))
    if funds.size:
        # Low balances clear on paydays: Fridays, the 1st and the 15th, in the morning.
        plan[funds] = _common_paydays(f0[funds], records.tz_offset_minutes[funds], 4)
    out: F64 = np.minimum(plan, f0[:, None] + horizon_days * timeutil.DAY)
    return out


def decline_aware_planner(records: FailureRecords, horizon_days: float = 14.0) -> Planner:
    """The decline-aware rule set as a planner."""
    return table_planner(records, decline_aware_times(records, horizon_days))


def exploration_times(
    records: FailureRecords, rng: np.random.Generator, attempts: int, horizon_days: float
) -> F64:
    """Random retry times over the window, so training sees times no fixed schedule uses."""
    n = len(records)
    offsets = np.sort(rng.uniform(0.5 / 24.0, horizon_days, (n, attempts)), axis=1)
    out: F64 = records.failed_at[:, None] + offsets * timeutil.DAY
    return out
