"""The oracle: retry times chosen knowing each failure's hidden state, the bound on timing.

It sees what no real system sees: the cause of each failure, when the customer's paydays fall and
when a hold clears. It plans with the same budget (retries within a horizon), the same network
rules and the same spacing as the model's policy, and maximizes the exact chance of recovery the
world gives. What it recovers is the most any choice of retry times can recover in that world.
Outcomes stay random: the oracle knows every chance, not the draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml import baselines, rules, timeutil
from ml.engine import Planner
from ml.records import FailureRecords
from ml.simulator.config import OutcomeConfig
from ml.simulator.world import FailureBatch, attempt_odds, retry_penalty

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class OracleConfig:
    """The budget matches the model's policy; the rest sets how finely times are searched."""

    # With retries at least an hour apart, up to 8 retries stay below every network cap (§2:
    # 5 an hour per customer, 10 a day on Mastercard), so the search only spaces them; the
    # planner still puts each retry through the rules.
    budget: int = 4
    horizon_days: float = 14.0
    grid_hours: float = 1.0
    # Passes that move one planned retry at a time to a better candidate.
    improvement_passes: int = 1
    chunk: int = 2000


@dataclass(frozen=True)
class _Candidates:
    """Candidate times per failure with what an attempt at each would meet (NaN = not allowed)."""

    t: F64
    fresh: F64
    window_start: F64


def _first_local_hour(t: F64, tz_minutes: F64, hour: float) -> F64:
    """The first time at or after t that is `hour` o'clock local (t is (m, k))."""
    local = t + tz_minutes[:, None] * 60.0
    target = np.floor(local / timeutil.DAY) * timeutil.DAY + hour * timeutil.HOUR
    target = np.where(target < local, target + timeutil.DAY, target)
    out: F64 = target - tz_minutes[:, None] * 60.0
    return out


def _changes(window_start: F64) -> F64:
    """Each row's distinct state starts after the first, left-aligned and NaN-padded."""
    changed = np.zeros(window_start.shape, dtype=bool)
    changed[:, 1:] = window_start[:, 1:] != window_start[:, :-1]
    width = max(int(changed.sum(axis=1).max()) if changed.size else 0, 1)
    order = np.argsort(~changed, axis=1, kind="stable")[:, :width]
    out: F64 = np.take_along_axis(np.where(changed, window_start, np.nan), order, axis=1)
    return out


def _candidates(batch: FailureBatch, rows: I64, config: OracleConfig) -> _Candidates:
    """An hourly grid, each local 06:00, and every payday or clearing with the 06:00 after it."""
    obs = batch.observed
    f0 = obs.failed_at[rows]
    tz = obs.tz_offset_minutes[rows].astype(np.float64)
    step = config.grid_hours * timeutil.HOUR
    horizon = config.horizon_days * timeutil.DAY
    grid = f0[:, None] + np.arange(step, horizon + 1.0, step)[None, :]
    days = np.arange(0.0, config.horizon_days) * timeutil.DAY
    mornings = _first_local_hour(f0[:, None] + days[None, :], tz, 6.0)
    base = np.concatenate([grid, mornings], axis=1)
    first = _odds(batch, rows, base)
    # The states an attempt can meet start on the grid's changes of window: paydays, clearings.
    events = _changes(first.window_start[:, : grid.shape[1]])
    events = np.concatenate([events, _first_local_hour(events, tz, 6.0)], axis=1)
    extra = _odds(batch, rows, events)
    t = np.concatenate([first.t, extra.t], axis=1)
    records = obs.take(rows)
    g = t.shape[1]
    flat = t.reshape(-1)
    rep = np.repeat(np.arange(rows.size), g)
    # Within the horizon, and as far from the decline as any retry must be from the last one.
    gap = baselines.MIN_GAP_HOURS * timeutil.HOUR
    ok = ~np.isnan(flat) & (flat <= np.repeat(f0 + horizon, g)) & (flat >= np.repeat(f0 + gap, g))
    ok[ok] = rules.allowed(records.take(rep[ok]), np.full((int(ok.sum()), 1), np.nan), flat[ok])
    ok = ok.reshape(t.shape)
    return _Candidates(
        t=np.where(ok, t, np.nan),
        fresh=np.concatenate([first.fresh, extra.fresh], axis=1),
        window_start=np.concatenate([first.window_start, extra.window_start], axis=1),
    )


def _odds(batch: FailureBatch, rows: I64, t: F64) -> _Candidates:
    m, g = t.shape
    flat = t.reshape(-1)
    ok = ~np.isnan(flat)
    fresh = np.zeros(m * g)
    start = np.full(m * g, np.nan)
    odds = attempt_odds(batch, np.repeat(rows, g)[ok], flat[ok])
    fresh[ok] = odds.fresh
    start[ok] = odds.window_start
    return _Candidates(t=t, fresh=fresh.reshape(m, g), window_start=start.reshape(m, g))


def _chance(outcome: OutcomeConfig, t: F64, fresh: F64, window_start: F64) -> F64:
    """Exact chance that retries at t (m, k; NaN = none) recover, each after the earlier ones."""
    m, k = t.shape
    survive = np.ones(m)
    for j in range(k):
        used = ~np.isnan(t[:, j])
        # The penalty counts only the retries before t[:, j]; NaN times count nowhere.
        others = np.delete(t, j, axis=1) if k > 1 else np.full((m, 1), np.nan)
        pen = retry_penalty(outcome, window_start[:, j], np.where(used, t[:, j], 0.0), others)
        p = np.clip(fresh[:, j] * pen, 0.0, 1.0)
        survive *= 1.0 - np.where(used, p, 0.0)
    out: F64 = 1.0 - survive
    return out


def _gather(cand: _Candidates, plans: I64) -> _Candidates:
    """The candidates a plan (columns per row, -1 = none) picks, NaN time where none."""
    r = np.arange(plans.shape[0])[:, None]
    col = np.maximum(plans, 0)
    return _Candidates(
        t=np.where(plans >= 0, cand.t[r, col], np.nan),
        fresh=cand.fresh[r, col],
        window_start=cand.window_start[r, col],
    )


def _best_swap(outcome: OutcomeConfig, cand: _Candidates, plans: I64, slot: int) -> tuple[F64, I64]:
    """Per row, the best candidate for plan slot `slot` and the plan's chance with it."""
    m, g = cand.t.shape
    rest = np.delete(plans, slot, axis=1)
    # Slots no row has filled yet change nothing: leave them out of the count.
    others = _gather(cand, rest[:, (rest >= 0).any(axis=0)])
    gap = baselines.MIN_GAP_HOURS * timeutil.HOUR
    # A candidate must keep the minimum spacing to every other planned retry.
    clash = np.any(np.abs(cand.t[:, :, None] - others.t[:, None, :]) < gap, axis=2)
    ok = ~np.isnan(cand.t) & ~clash

    def trial(other: F64, mine: F64) -> F64:
        k = other.shape[1]
        both = np.concatenate([np.broadcast_to(other[:, None, :], (m, g, k)), mine[:, :, None]], 2)
        out: F64 = both.reshape(m * g, k + 1)
        return out

    value = _chance(
        outcome,
        trial(others.t, cand.t),
        trial(others.fresh, cand.fresh),
        trial(others.window_start, cand.window_start),
    ).reshape(m, g)
    value = np.where(ok, value, -1.0)
    best = value.argmax(axis=1)
    return value[np.arange(m), best], best.astype(np.int64)


def plan_times(
    batch: FailureBatch, rows: I64, config: OracleConfig | None = None
) -> tuple[F64, F64]:
    """Retry times (m, budget; NaN-padded, in time order) and each plan's chance of recovery.

    Retries are added one at a time where they raise the chance most, then each is moved to
    a better time while one exists.
    """
    config = config or OracleConfig()
    times = np.full((rows.size, config.budget), np.nan)
    value = np.zeros(rows.size)
    every = _candidates(batch, rows, config)
    # A failure no allowed retry can recover (a dead card, a hard decline) gets no retry.
    hopeful = np.flatnonzero(np.any(~np.isnan(every.t) & (every.fresh > 0.0), axis=1))
    cand = _Candidates(every.t[hopeful], every.fresh[hopeful], every.window_start[hopeful])
    plans = np.full((hopeful.size, config.budget), -1, dtype=np.int64)
    outcome = batch.config.outcome
    # First fill the slots one by one, then revisit each while a move still helps.
    for slot in list(range(config.budget)) * (1 + config.improvement_passes):
        best_value, best = _best_swap(outcome, cand, plans, slot)
        take = best_value > value[hopeful] + 1e-12
        plans[take, slot] = best[take]
        value[hopeful] = np.where(take, best_value, value[hopeful])
    times[hopeful] = np.sort(_gather(cand, plans).t, axis=1)
    return times, value


@dataclass(frozen=True)
class OraclePlans:
    """Every failure's planned retry times (n, budget; NaN-padded) and their chance to recover."""

    times: F64
    chance: F64


def plan_failures(batch: FailureBatch, config: OracleConfig | None = None) -> OraclePlans:
    """The oracle's plan for every failure of the batch, in chunks."""
    config = config or OracleConfig()
    n = len(batch)
    times = np.full((n, config.budget), np.nan)
    chance = np.zeros(n)
    for lo in range(0, n, config.chunk):
        rows = np.arange(lo, min(lo + config.chunk, n), dtype=np.int64)
        times[rows], chance[rows] = plan_times(batch, rows, config)
    return OraclePlans(times, chance)


def oracle_planner(records: FailureRecords, plans: OraclePlans) -> Planner:
    """The oracle's plans as a planner: retry k is the k-th planned time if the rules allow it.

    The check is the model policy's: the network rules on the retries made so far, and the
    minimum spacing after the last one. A refused time ends the failure's retries.
    """

    def plan(k: int, rows: I64, prev: F64) -> F64:
        if k >= plans.times.shape[1]:
            return np.full(rows.size, np.nan)
        t = plans.times[rows, k]
        last = np.fmax(records.failed_at[rows], np.fmax.reduce(prev, axis=1))
        ok = ~np.isnan(t)
        ok &= t >= last + baselines.MIN_GAP_HOURS * timeutil.HOUR
        ok[ok] = rules.allowed(records.take(rows[ok]), prev[ok], t[ok])
        out: F64 = np.where(ok, t, np.nan)
        return out

    return plan
