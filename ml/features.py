"""Attempt features as of the decision time, from observable records only; one builder for all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml import paydays, timeutil
from ml.records import FailureRecords

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntIndex = npt.NDArray[np.intp] | I64


@dataclass(frozen=True)
class FeatureList:
    """The ordered feature names a model was trained on, under a version tag."""

    name: str
    version: int
    features: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def tag(self) -> str:
        """Name and version in one string, as stored beside a model."""
        return f"{self.name}/v{self.version}"


FEATURE_LIST = FeatureList(
    name="attempt_success",
    version=2,
    features=(
        "category",
        "network_code",
        "advice_code",
        "funding",
        "brand",
        "country",
        "currency",
        "log_amount",
        "attempt_number",
        "hours_since_failure",
        "hours_since_last_attempt",
        "attempts_last_24h",
        "mean_spacing_hours",
        "local_hour",
        "weekday",
        "day_of_month",
        "failure_local_hour",
        "failure_weekday",
        "failure_day_of_month",
        "n_past_success",
        "days_since_pay_weekday",
        "pay_weekday_strength",
        "days_since_biweekly_phase",
        "days_since_pay_day_of_month",
        "days_since_likely_payday",
        "payday_chance_today",
        "payday_chance_yesterday",
        "payday_chance_2_days_ago",
        "expected_paydays_since_failure",
        "expected_paydays_since_last_attempt",
    ),
    categorical=(
        "category",
        "network_code",
        "advice_code",
        "funding",
        "brand",
        "country",
        "currency",
    ),
)
N_FEATURES = len(FEATURE_LIST.features)
_COL = {name: i for i, name in enumerate(FEATURE_LIST.features)}
_MONTH_DAYS = 30.44
_STATIC = (
    "category",
    "network_code",
    "advice_code",
    "funding",
    "brand",
    "country",
    "currency",
    "log_amount",
    "failure_local_hour",
    "failure_weekday",
    "failure_day_of_month",
    "n_past_success",
    "pay_weekday_strength",
    "days_since_likely_payday",
)
_STATIC_COLS = np.array([_COL[name] for name in _STATIC])
_WEEKDAYS = np.arange(7)


@dataclass(frozen=True)
class FailureContext:
    """Per-failure parts of the features, computed once and reused for every candidate time."""

    static: F32
    failed_at: F64
    tz_minutes: F64
    pay_weekday: F64
    past: F64
    past_dom: F64
    # Local day number of the decline, and how likely each pay schedule is (ml/paydays.py).
    failure_day: I64
    paydays: paydays.PaydayBelief


def failure_context(
    records: FailureRecords, payday_reading: paydays.Reading | None = None
) -> FailureContext:
    """Precompute everything that does not depend on the candidate time.

    `payday_reading` is how the model reads paydays (`TimingModel.payday_reading`: the
    population prior it was trained with, `fit_payday_prior`); without it, ml/paydays.py's
    defaults.
    """
    n = len(records)
    tz = records.tz_offset_minutes.astype(np.float64)
    f0 = records.failed_at
    f_local = timeutil.local_seconds(f0, tz)
    past = records.past_success
    present = np.isfinite(past)
    past_local = np.where(present, past + tz[:, None] * 60.0, 0.0)
    # One calendar conversion for the decline and its past charges together.
    days = timeutil.local_day(np.concatenate([f_local[:, None], past_local], axis=1))
    doms = timeutil.day_of_month(days).astype(np.float64)
    f_day = days[:, 0]
    f_dom = doms[:, 0]
    past_day = days[:, 1:]
    past_dom = doms[:, 1:]
    # Renewals say nothing about paydays: drop what lands on the billing day of the month or a
    # whole number of billing months (within a day) before the decline.
    dom_gap = np.abs(past_dom - f_dom[:, None])
    months = (f0[:, None] - np.where(present, past, f0[:, None])) / (_MONTH_DAYS * timeutil.DAY)
    renewal = np.minimum(dom_gap, _MONTH_DAYS - dom_gap) <= 1.0
    renewal |= (months >= 0.5) & (np.abs(months - np.round(months)) * _MONTH_DAYS <= 1.0)
    keep = present & ~renewal & (past < f0[:, None])
    past = np.where(keep, past, np.nan)
    past_dom = np.where(keep, past_dom, np.nan)
    n_past = keep.sum(axis=1)
    # Move kept entries to the front and drop all-empty slots: candidates then scan fewer columns.
    order = np.argsort(~keep, axis=1, kind="stable")
    width = max(int(n_past.max()) if n else 0, 1)
    past = np.take_along_axis(past, order, axis=1)[:, :width]
    past_dom = np.take_along_axis(past_dom, order, axis=1)[:, :width]

    weekdays = np.where(keep, timeutil.weekday(past_day), -1)
    counts = (weekdays[:, :, None] == _WEEKDAYS).sum(axis=1)
    mode = counts.argmax(axis=1).astype(np.float64)
    strength = np.where(n_past > 0, counts.max(axis=1) / np.maximum(n_past, 1), 0.0)

    static = np.empty((n, len(_STATIC)), dtype=np.float32)
    static[:, :7] = np.stack(
        [
            records.category,
            records.network_code,
            records.advice_code,
            records.funding,
            records.brand,
            records.country,
            records.currency,
        ],
        axis=1,
    )
    static[:, 7] = np.log1p(records.amount_minor.astype(np.float64))
    static[:, 8] = timeutil.hour_of_day(f_local)
    static[:, 9] = timeutil.weekday(f_day)
    static[:, 10] = f_dom
    static[:, 11] = n_past
    static[:, 12] = strength
    belief = paydays.payday_belief(f_local, np.where(keep, past_local, np.nan), payday_reading)
    static[:, 13] = belief.days_since_payday
    return FailureContext(
        static=static,
        failed_at=f0,
        tz_minutes=tz,
        pay_weekday=np.where(n_past > 0, mode, np.nan),
        past=past,
        past_dom=past_dom,
        failure_day=f_day,
        paydays=belief,
    )


def fit_payday_prior(records: FailureRecords) -> F64:
    """The population's prior over pay schedules, fitted to the evidence of many failures:
    their customers' earlier recoveries (renewals left out) and the declines' timing."""
    context = failure_context(records)
    tz_seconds = context.tz_minutes * 60.0
    return paydays.fit_prior(
        timeutil.local_seconds(context.failed_at, context.tz_minutes),
        context.past + tz_seconds[:, None],
    )


def build_features(
    context: FailureContext, rows: IntIndex, t: F64, prev: F64, out: F32 | None = None
) -> F32:
    """Feature matrix for candidate attempts: row i is failure rows[i] retried at t[i].

    `prev` holds, per candidate row, the earlier retry times known at decision time
    (NaN-padded); retries after t are ignored.
    """
    m = t.shape[0]
    x = out if out is not None else np.empty((m, N_FEATURES), dtype=np.float32)
    x[:, _STATIC_COLS] = context.static[rows]
    f0 = context.failed_at[rows]
    tz = context.tz_minutes[rows]
    earlier = prev < t[:, None]
    prev_known = np.where(earlier, prev, np.nan)
    n_prev = earlier.sum(axis=1)
    # fmax/fmin reductions skip NaN without the all-NaN warnings of nanmax/nanmin.
    last = np.fmax(f0, np.fmax.reduce(prev_known, axis=1))
    hours_since = (t - f0) / timeutil.HOUR
    hours_last = (t - last) / timeutil.HOUR
    x[:, _COL["attempt_number"]] = n_prev + 1
    x[:, _COL["hours_since_failure"]] = hours_since
    x[:, _COL["hours_since_last_attempt"]] = hours_last
    recent = t - timeutil.DAY
    x[:, _COL["attempts_last_24h"]] = (prev_known > recent[:, None]).sum(axis=1) + (f0 > recent)
    # Mean spacing of the attempts so far: the span from the decline to the last retry.
    x[:, _COL["mean_spacing_hours"]] = np.where(
        n_prev > 0, (last - f0) / timeutil.HOUR / np.maximum(n_prev, 1), np.nan
    )

    local = t + tz * 60.0
    day_float = local / timeutil.DAY
    day = np.floor(day_float).astype(np.int64)
    x[:, _COL["local_hour"]] = (day_float - day) * 24.0
    weekday_float = np.mod(day_float + 3.0, 7.0)
    x[:, _COL["weekday"]] = np.floor(weekday_float)
    dom = timeutil.day_of_month(day).astype(np.float64)
    x[:, _COL["day_of_month"]] = dom

    since_weekday = np.mod(weekday_float - context.pay_weekday[rows], 7.0)
    past = context.past[rows]
    since_phase = np.fmin.reduce(np.mod((t[:, None] - past) / timeutil.DAY, 14.0), axis=1)
    dom_float = dom + (day_float - day) - 1.0
    since_dom = np.fmin.reduce(
        np.mod(dom_float[:, None] - (context.past_dom[rows] - 1.0), _MONTH_DAYS), axis=1
    )
    x[:, _COL["days_since_pay_weekday"]] = since_weekday
    x[:, _COL["days_since_biweekly_phase"]] = since_phase
    x[:, _COL["days_since_pay_day_of_month"]] = since_dom
    _payday_columns(x, context, rows, day, last, prev_known)
    return x


def _payday_columns(
    x: F32, context: FailureContext, rows: IntIndex, day: I64, last: F64, prev: F64
) -> None:
    """Payday chances by local day: on the candidate's day and the two before, and the expected
    paydays since the decline and since the last attempt, given the retries that failed."""
    rows = np.asarray(rows, dtype=np.int64)
    tz = context.tz_minutes[rows]
    # The candidates of one decision share their failure and retries: weigh schedules once.
    key = np.concatenate([rows[:, None].astype(np.float64), np.nan_to_num(prev, nan=-1.0)], 1)
    _, one, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    chances = paydays.day_chances(
        context.paydays,
        rows[one],
        context.failure_day[rows[one]],
        prev[one] + tz[one, None] * 60.0,
    )
    cum = np.cumsum(chances, axis=1)[inverse.reshape(-1)]
    last_day = timeutil.local_day(timeutil.local_seconds(last, tz))
    # Expected paydays from the first covered day through each of these days.
    days = np.stack([day, day - 1, day - 2, day - 3, context.failure_day[rows], last_day], 1)
    base = context.failure_day[rows] - paydays.DAYS_BEFORE
    index = np.clip(days - base[:, None], 0, paydays.WIDTH - 1)
    today, yesterday, two_ago, three_ago, decline, last_try = np.take_along_axis(
        cum, index, axis=1
    ).T
    x[:, _COL["payday_chance_today"]] = today - yesterday
    x[:, _COL["payday_chance_yesterday"]] = yesterday - two_ago
    x[:, _COL["payday_chance_2_days_ago"]] = two_ago - three_ago
    x[:, _COL["expected_paydays_since_failure"]] = today - decline
    x[:, _COL["expected_paydays_since_last_attempt"]] = today - last_try
