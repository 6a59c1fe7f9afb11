"""Where a customer's paydays likely fall, from what the portal sees: past payments and retries.

Pay arrives on a schedule: weekly on a weekday, every two weeks, on the 1st and 15th, or monthly
on a day of the month (a month-based payday on a weekend is paid the Friday before), early in
the morning. Each schedule is a hypothesis, weighed by the evidence the portal holds:
- an earlier recovery of the customer lands between a payday's deposit and early afternoon of
  the next day (renewals, on the billing day, are left out by the caller);
- a balance runs low late in a pay period, so a decline far from the last payday is likelier;
- a retry just after a payday that still failed makes that payday less likely.
The result is, for each day around the decline, the chance that it is a payday.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml import timeutil

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

# Hypotheses: weekly on weekday 0..6 (Monday = 0), every two weeks on phase 0..13 (day number
# mod 14), the 1st and 15th, monthly on day 1..28.
_WEEKLY = 7
_BIWEEKLY = 14
_MONTHLY_DAYS = 28
N_HYPOTHESES = _WEEKLY + _BIWEEKLY + 1 + _MONTHLY_DAYS
_PERIOD_DAYS = np.concatenate(
    [np.full(_WEEKLY, 7.0), np.full(_BIWEEKLY, 14.0), [15.2], np.full(_MONTHLY_DAYS, 30.4)]
)
# Shares of the kinds of pay cycle (docs/domain.md §4), split evenly within each kind.
_PRIOR = np.concatenate(
    [
        np.full(_WEEKLY, 0.32 / _WEEKLY),
        np.full(_BIWEEKLY, 0.37 / _BIWEEKLY),
        [0.20],
        np.full(_MONTHLY_DAYS, 0.11 / _MONTHLY_DAYS),
    ]
)
_KINDS = (
    slice(0, _WEEKLY),
    slice(_WEEKLY, _WEEKLY + _BIWEEKLY),
    slice(_WEEKLY + _BIWEEKLY, _WEEKLY + _BIWEEKLY + 1),
    slice(_WEEKLY + _BIWEEKLY + 1, N_HYPOTHESES),
)
# Weight of a past recovery that fits no payday of a schedule (irregular pay, other income).
_MISFIT = 0.1
# Deposits post from this local hour and are in by the second; a recovery follows a deposit
# by this many hours after the payday's midnight at the latest.
_FIRST_DEPOSIT_HOUR = 1.0
_DEPOSIT_HOUR = 4.0
_LAST_RECOVERY_HOUR = 37.0
# A retry within this many days after a payday finds the money about this often: a failed
# one weighs against that payday by this much (not more: the decline may not be a low balance).
# Models trained before the share was stored with them read paydays with the earlier 0.5.
_PAYDAY_REACH_DAYS = 3
RETRY_SUCCESS = 0.7
LEGACY_RETRY_SUCCESS = 0.5
# The days around the decline's local day that the chances cover: a few before it (how recent
# a payday is), and beyond the longest retry window after it.
DAYS_BEFORE = 3
DAYS_AFTER = 31
WIDTH = DAYS_BEFORE + DAYS_AFTER + 1


def _month_paydays(days: I64, day_of_month: int) -> B:
    """Whether each day is the payday of a monthly schedule on `day_of_month`."""
    out = np.zeros(days.shape, dtype=bool)
    # The next month too: its payday on a weekend moves back into this month.
    for month in (0, 1):
        nominal = timeutil.month_start_day(days, month) + day_of_month - 1
        wd = timeutil.weekday(nominal)
        adjusted = nominal - np.where(wd == 5, 1, 0) - np.where(wd == 6, 2, 0)
        out |= adjusted == days
    return out


def payday_table(first_day: int, last_day: int) -> B:
    """(days, hypotheses): whether each day number in [first_day, last_day] is a payday."""
    days = np.arange(first_day, last_day + 1, dtype=np.int64)
    cols = [timeutil.weekday(days) == d for d in range(_WEEKLY)]
    cols += [np.mod(days, _BIWEEKLY) == p for p in range(_BIWEEKLY)]
    cols.append(_month_paydays(days, 1) | _month_paydays(days, 15))
    cols += [_month_paydays(days, d) for d in range(1, _MONTHLY_DAYS + 1)]
    return np.stack(cols, axis=1)


# Tables are built for whole blocks of days and kept: one decision needs only a few rows.
_TABLE_BLOCK_DAYS = 512
_CHUNK_ROWS = 4096


@functools.lru_cache(maxsize=16)
def _block_table(start: int, stop: int) -> tuple[B, I64]:
    """The payday table of days [start, stop] and, per day and hypothesis, the row of the
    latest payday at or before it (-1: none in the table)."""
    table = payday_table(start, stop)
    index = np.arange(table.shape[0])[:, None]
    latest = np.maximum.accumulate(np.where(table, index, -1), axis=0)
    table.flags.writeable = False
    latest.flags.writeable = False
    return table, latest


def _covering_table(first_day: int, last_day: int) -> tuple[B, I64, int]:
    """Payday table and latest paydays covering [first_day, last_day], and its first day."""
    start = first_day // _TABLE_BLOCK_DAYS * _TABLE_BLOCK_DAYS
    stop = -(-(last_day + 1) // _TABLE_BLOCK_DAYS) * _TABLE_BLOCK_DAYS - 1
    table, latest = _block_table(start, stop)
    return table, latest, start


@dataclass(frozen=True)
class Reading:
    """How a model reads paydays: the population's prior over schedules (`fit_prior`) and how
    much a failed retry just after a payday weighs against it."""

    prior: F64
    retry_success: float = RETRY_SUCCESS


@dataclass(frozen=True)
class PaydayBelief:
    """Per failure, how likely each pay schedule is, and the schedules' paydays by day number."""

    table: B
    first_day: int
    posterior: F64
    # Expected days since the last deposit, at the decline.
    days_since_payday: F64
    # How often a retry just after a payday finds the money (failed retries' evidence).
    retry_success: float = RETRY_SUCCESS

    def paydays(self, day: I64) -> B:
        """(m, hypotheses): whether each day is a payday; days outside the table are not."""
        i = day - self.first_day
        inside = (i >= 0) & (i < self.table.shape[0])
        out: B = self.table[np.where(inside, i, 0)] & inside[:, None]
        return out


def _evidence(failed_at_local: F64, past_local: F64) -> tuple[B, int, F64, F64]:
    """Payday table, its first day, and per failure and schedule the log-likelihood of the
    evidence and the days since the schedule's last deposit at the decline."""
    day0 = timeutil.local_day(failed_at_local)
    present = ~np.isnan(past_local)
    past_day = timeutil.local_day(np.where(present, past_local, failed_at_local[:, None]))
    # Forty-six days before the decline hold the last payday of every schedule.
    table, latest, first = _covering_table(
        int(min(past_day.min() - 1, day0.min() - 46)), int(day0.max() + DAYS_AFTER)
    )

    hour = timeutil.hour_of_day(np.where(present, past_local, 0.0))[:, :, None]
    fits = (table[past_day - first] & (hour >= _FIRST_DEPOSIT_HOUR)) | (
        table[past_day - first - 1] & (hour <= _LAST_RECOVERY_HOUR - 24.0)
    )
    misfits = (present[:, :, None] & ~fits).sum(axis=1)
    before_deposit = timeutil.hour_of_day(failed_at_local) < _DEPOSIT_HOUR
    paid_day = latest[day0 - first - before_deposit] + first
    since = failed_at_local[:, None] / timeutil.DAY - paid_day - _DEPOSIT_HOUR / 24.0
    late = np.clip(since / _PERIOD_DAYS[None, :], 0.1, 1.0)
    return table, first, misfits * np.log(_MISFIT) + np.log(late), since


def default_prior() -> F64:
    """The prior over schedules before any data: the kinds' shares, even within each kind."""
    return _PRIOR.copy()


def fit_prior(
    failed_at_local: F64, past_local: F64, rounds: int = 50, pseudo_count: float = 50.0
) -> F64:
    """A population prior over schedules fitted to many customers' evidence (expectation-
    maximization): which weekdays, phases and days of the month customers are paid on.

    The kinds keep their shares: recoveries alone cannot tell a weekly payday from a two-weekly
    one on the same weekday, or a monthly one on the 1st from the 1st and 15th, so a free fit
    drifts to the schedules with more paydays. Each failure's evidence is what `payday_belief`
    weighs; `pseudo_count` customers' worth of the default prior keeps every schedule possible.
    """
    base = default_prior()
    if failed_at_local.shape[0] == 0:
        return base
    _, _, log_lik, _ = _evidence(failed_at_local, past_local)
    lik = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    prior = base
    for _ in range(rounds):
        post = lik * prior[None, :]
        post /= post.sum(axis=1, keepdims=True)
        mass = post.sum(axis=0) + pseudo_count * base
        for kind in _KINDS:
            mass[kind] *= base[kind].sum() / mass[kind].sum()
        prior = mass
    out: F64 = prior / prior.sum()
    return out


def payday_belief(
    failed_at_local: F64, past_local: F64, reading: Reading | None = None
) -> PaydayBelief:
    """Weigh every schedule by the customer's past recoveries and the decline's timing.

    `failed_at_local` (n,) and `past_local` (n, k; NaN-padded) are local times as epoch seconds;
    `reading` is the model's (its population prior and failed retries' weight); without it, the
    default prior and the current weight.
    """
    reading = reading or Reading(default_prior())
    n = failed_at_local.shape[0]
    if n == 0:
        return PaydayBelief(
            payday_table(0, 0),
            0,
            np.zeros((0, N_HYPOTHESES)),
            np.zeros(0),
            reading.retry_success,
        )
    table, first, log_lik, since = _evidence(failed_at_local, past_local)
    log_post = np.log(reading.prior)[None, :] + log_lik
    post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    return PaydayBelief(table, first, post, (post * since).sum(axis=1), reading.retry_success)


def day_chances(belief: PaydayBelief, rows: I64, failure_day: I64, failed_local: F64) -> F64:
    """(m, WIDTH): chance that each day from DAYS_BEFORE before the decline's is a payday.

    `failure_day` is each row's local day of the decline; `failed_local` (m, k; NaN-padded)
    the local times of the retries that failed so far.
    """
    post = belief.posterior[rows].copy()
    for j in range(failed_local.shape[1]):
        s = failed_local[:, j]
        made = ~np.isnan(s)
        s = np.where(made, s, 0.0)
        day = timeutil.local_day(s)
        deposited = timeutil.hour_of_day(s) >= _DEPOSIT_HOUR
        hit = np.zeros(post.shape, dtype=bool)
        for back in range(_PAYDAY_REACH_DAYS):
            fresh = made & (day - back > failure_day) & ((back > 0) | deposited)
            hit |= belief.paydays(day - back) & fresh[:, None]
        post *= np.where(hit, 1.0 - belief.retry_success, 1.0)
    post /= post.sum(axis=1, keepdims=True)
    out = np.empty((rows.shape[0], WIDTH))
    offsets = np.arange(WIDTH) - DAYS_BEFORE
    for lo in range(0, rows.shape[0], _CHUNK_ROWS):
        part = slice(lo, lo + _CHUNK_ROWS)
        days = (failure_day[part, None] + offsets[None, :]).reshape(-1)
        window = belief.paydays(days).reshape(-1, WIDTH, N_HYPOTHESES)
        out[part] = np.einsum("mh,mwh->mw", post[part], window)
    return out
