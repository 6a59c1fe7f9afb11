"""Payday belief: schedules' calendars, the evidence of past recoveries and of failed retries."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from ml import paydays
from ml.features import FEATURE_LIST, build_features, failure_context, fit_payday_prior
from ml.records import FailureRecords, FailureRow

# A Tuesday decline; the customer's earlier recoveries came on Friday afternoons (a recovery
# that late follows that day's deposit, not the day before's).
FAILED = datetime(2026, 2, 10, 6, 0, tzinfo=UTC)
FRIDAYS = tuple(datetime(2026, 1, 2, 15, 0, tzinfo=UTC) + timedelta(weeks=w) for w in (0, 2, 3, 5))
WEEKLY, BIWEEKLY, SEMIMONTHLY = 0, 7, 21
MONTHLY = SEMIMONTHLY + 1


def _day(d: date) -> int:
    return int((np.datetime64(d) - np.datetime64("1970-01-01")).astype(np.int64))


def _row(past: tuple[datetime, ...]) -> FailureRow:
    return FailureRow(
        failure_id=1,
        customer_id=1,
        failed_at=FAILED,
        amount_minor=2999,
        currency="GBP",
        category="insufficient_funds",
        network_code="51",
        advice_code="",
        funding="debit",
        brand="visa",
        country="GB",
        tz_offset_minutes=0,
        past_success_at=past,
    )


def test_schedules_mark_their_paydays_and_move_weekend_ones_to_friday() -> None:
    first = _day(date(2026, 1, 1))
    table = paydays.payday_table(first, _day(date(2026, 2, 28)))
    assert table.shape == (59, paydays.N_HYPOTHESES)
    friday = _day(date(2026, 1, 30)) - first
    assert table[friday, WEEKLY + 4]
    assert table[friday - 14, BIWEEKLY + (friday + first) % 14]
    assert not table[friday - 7, BIWEEKLY + (friday + first) % 14]
    # 1 February 2026 is a Sunday: the 1st's pay comes on Friday 30 January, the 15th's
    # (also a Sunday) on Friday 13 February.
    assert table[friday, SEMIMONTHLY]
    assert table[friday, MONTHLY]
    assert not table[_day(date(2026, 2, 1)) - first, SEMIMONTHLY]
    assert table[_day(date(2026, 2, 13)) - first, SEMIMONTHLY]
    assert table[_day(date(2026, 1, 15)) - first, SEMIMONTHLY]
    assert table[_day(date(2026, 2, 25)) - first, MONTHLY + 24]


def test_recoveries_on_fridays_make_fridays_the_likely_paydays() -> None:
    records = FailureRecords.from_rows([_row(FRIDAYS)])
    context = failure_context(records)
    rows = np.zeros(1, dtype=np.int64)
    none = np.full((1, 1), np.nan)
    chances = paydays.day_chances(context.paydays, rows, context.failure_day, none)[0]
    week = chances[paydays.DAYS_BEFORE + 1 : paydays.DAYS_BEFORE + 8]  # Wednesday .. Tuesday
    assert int(np.argmax(week)) == 2
    assert week[2] > 0.6 > 0.1 > np.delete(week, 2).max()
    # Without past recoveries, no weekday stands out as much.
    bare = failure_context(FailureRecords.from_rows([_row(())]))
    flat = paydays.day_chances(bare.paydays, rows, bare.failure_day, none)[0]
    assert flat.max() < week[2]

    col = FEATURE_LIST.features.index
    t = np.array([FAILED.timestamp() + h * 3600.0 for h in (24 * 3 + 4, 24 + 4)])  # Fri, Wed
    x = build_features(context, np.zeros(2, dtype=np.int64), t, np.full((2, 1), np.nan))
    assert x[0, col("payday_chance_today")] > 0.6 > 0.1 > x[1, col("payday_chance_today")]
    assert x[0, col("expected_paydays_since_failure")] > x[1, col("expected_paydays_since_failure")]


def test_a_failed_retry_just_after_a_likely_payday_makes_that_schedule_less_likely() -> None:
    context = failure_context(FailureRecords.from_rows([_row(FRIDAYS)]))
    rows = np.zeros(1, dtype=np.int64)
    friday = FAILED + timedelta(days=3, hours=4)
    before = paydays.day_chances(
        context.paydays, rows, context.failure_day, np.full((1, 1), np.nan)
    )
    failed = np.array([[friday.timestamp()]])
    after = paydays.day_chances(context.paydays, rows, context.failure_day, failed)
    next_friday = paydays.DAYS_BEFORE + 10
    assert 0.0 < after[0, next_friday] < before[0, next_friday]
    assert after[0, next_friday - 3] > before[0, next_friday - 3]
    # The features of a later candidate see the failed retry only once it has happened.
    col = FEATURE_LIST.features.index("payday_chance_today")
    t = np.array([(friday + timedelta(days=7)).timestamp()])
    seen = build_features(context, rows, t, failed)[0, col]
    unseen = build_features(context, rows, t, failed + 8 * 86400.0)[0, col]
    assert seen < unseen
    assert unseen == pytest.approx(before[0, next_friday])


def test_renewals_are_no_evidence_of_paydays() -> None:
    # One on the decline's day of the month; one a whole billing month (30.44 days) before a
    # decline on 2 March, which falls on 30 January.
    on_the_day = FAILED - timedelta(days=31)
    feb_decline = dataclasses.replace(_row(()), failed_at=datetime(2026, 3, 2, 6, tzinfo=UTC))
    a_month_before = feb_decline.failed_at - timedelta(days=30.44)
    cases = [
        (_row((*FRIDAYS, on_the_day)), 4),
        (dataclasses.replace(feb_decline, past_success_at=(a_month_before,)), 0),
        (dataclasses.replace(feb_decline, past_success_at=FRIDAYS[-1:]), 1),
    ]
    n_past = FEATURE_LIST.features.index("n_past_success")
    for row, expected in cases:
        context = failure_context(FailureRecords.from_rows([row]))
        t = np.array([row.failed_at.timestamp() + 86400.0])
        x = build_features(context, np.zeros(1, dtype=np.int64), t, np.full((1, 1), np.nan))
        assert x[0, n_past] == expected, row.past_success_at
    with_renewal = failure_context(FailureRecords.from_rows([cases[0][0]]))
    without = failure_context(FailureRecords.from_rows([_row(FRIDAYS)]))
    assert np.array_equal(with_renewal.paydays.posterior, without.paydays.posterior)


def test_a_fitted_prior_learns_the_population_s_weekday_and_keeps_the_kinds_shares() -> None:
    # Customers each with one earlier recovery, on a Friday afternoon of some week.
    rows = [
        dataclasses.replace(_row((FRIDAYS[0] - timedelta(weeks=w),)), customer_id=w + 1)
        for w in range(40)
    ]
    records = FailureRecords.from_rows(rows)
    prior = fit_payday_prior(records)
    default = paydays.default_prior()
    assert prior.shape == default.shape
    assert np.all(prior > 0.0)
    assert prior.sum() == pytest.approx(1.0)
    for kind in (slice(WEEKLY, BIWEEKLY), slice(BIWEEKLY, SEMIMONTHLY), slice(MONTHLY, None)):
        assert prior[kind].sum() == pytest.approx(default[kind].sum())
    assert prior[WEEKLY + 4] > 2.0 * default[WEEKLY + 4]
    assert int(np.argmax(prior[WEEKLY:BIWEEKLY])) == 4
    # A customer without history now looks likelier to be paid on Fridays.
    bare = FailureRecords.from_rows([_row(())])
    one = np.zeros(1, dtype=np.int64)
    none = np.full((1, 1), np.nan)
    fitted = failure_context(bare, paydays.Reading(prior))
    even = failure_context(bare)
    friday = paydays.DAYS_BEFORE + 3
    assert (
        paydays.day_chances(fitted.paydays, one, fitted.failure_day, none)[0, friday]
        > paydays.day_chances(even.paydays, one, even.failure_day, none)[0, friday]
    )
