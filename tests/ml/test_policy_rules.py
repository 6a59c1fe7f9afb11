"""Policy planning, the fallback path, explanations, and the network-rule check."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from ml import rules, taxonomy
from ml.artifact import TimingModel
from ml.features import FEATURE_LIST
from ml.policy import (
    _LABELS,
    SOURCE_FALLBACK,
    SOURCE_MODEL,
    SOURCE_STOP,
    PolicyConfig,
    choose,
    plan_batch,
)
from ml.records import FailureRecords, FailureRow
from ml.train import TrainResult

DAY = 86400.0
FAILED = datetime(2025, 6, 3, 5, 0, tzinfo=UTC)


def _row(**changes: object) -> FailureRow:
    base = FailureRow(
        failure_id=1,
        customer_id=1,
        failed_at=FAILED,
        amount_minor=2999,
        currency="USD",
        category="insufficient_funds",
        network_code="51",
        advice_code="",
        funding="debit",
        brand="visa",
        country="US",
        tz_offset_minutes=-300,
        past_success_at=(datetime(2025, 5, 2, 14, 0, tzinfo=UTC),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _grid() -> list[float]:
    f0 = FAILED.timestamp()
    return [f0 + h * 3600.0 for h in range(3, 14 * 24 + 1, 3)]


def test_model_decision_picks_an_allowed_time_and_explains_it(trained: TrainResult) -> None:
    grid = _grid()
    d = choose(trained.model, _row(), [], grid, remaining_budget=4)
    assert d.source == SOURCE_MODEL
    assert d.attempt_at in grid
    assert d.attempt_at == min(d.planned)
    assert 1 <= len(d.planned) <= 4
    assert 0 < d.expected_recovered_minor <= 2999
    assert len(d.explanation) == 3
    assert {c.feature for c in d.explanation} <= set(FEATURE_LIST.features)
    assert all("chance" in c.text for c in d.explanation)


def test_without_a_model_the_fixed_schedule_decides_and_says_why() -> None:
    grid = _grid()
    d = choose(None, _row(), [], grid, remaining_budget=4)
    assert d.source == SOURCE_FALLBACK
    assert "no model" in d.reason
    assert d.attempt_at == FAILED.timestamp() + 1 * DAY
    second = choose(None, _row(), [FAILED.timestamp() + DAY], grid, remaining_budget=3)
    assert second.attempt_at == FAILED.timestamp() + 3 * DAY


def test_a_failing_model_falls_back(trained: TrainResult) -> None:
    broken = TimingModel(
        booster=trained.model.booster,
        calibrator_x=np.array([]),
        calibrator_y=np.array([]),
    )
    d = choose(broken, _row(), [], _grid(), remaining_budget=4)
    assert d.source == SOURCE_FALLBACK
    assert d.reason.startswith("model failed")


def test_no_budget_means_stop(trained: TrainResult) -> None:
    assert choose(trained.model, _row(), [], _grid(), remaining_budget=0).source == SOURCE_STOP
    assert choose(trained.model, _row(), [], [], remaining_budget=2).source == SOURCE_STOP


def test_plan_spends_the_budget_on_spaced_slots_not_one_peak() -> None:
    cfg = PolicyConfig(min_gap_hours=20.0, min_probability=0.01, discount_per_day=0.0)
    t = np.arange(0, 10 * DAY, 3 * 3600.0)[None, :]
    p = np.full(t.shape, 0.005)
    p[0, 40:44] = 0.5  # one sharp peak around day 5
    p[0, 10] = 0.3
    p[0, 70] = 0.2
    plan = plan_batch(p, t, np.array([3]), cfg)
    planned = np.sort(plan.planned[0][~np.isnan(plan.planned[0])])
    assert planned.size == 3
    assert planned.tolist() == [t[0, 10], t[0, 40], t[0, 70]]
    assert np.all(np.diff(planned) >= 20 * 3600.0)
    # The next retry is the earliest planned one, not the global peak.
    assert plan.next_t[0] == planned[0] == t[0, 10]
    assert plan.recover_probability[0] == pytest.approx(1 - 0.5 * 0.7 * 0.8)


def test_plan_skips_hopeless_failures() -> None:
    cfg = PolicyConfig(min_probability=0.05)
    t = np.arange(1, 20)[None, :] * 3600.0 * 24
    plan = plan_batch(np.full(t.shape, 0.01), t.astype(np.float64), np.array([4]), cfg)
    assert np.isnan(plan.next_t[0])


def _records(**changes: object) -> FailureRecords:
    return FailureRecords.from_rows([_row(**changes)])


def test_rules_visa_category_1_and_mastercard_hard_advice_never_retry() -> None:
    t = np.array([FAILED.timestamp() + 2 * DAY])
    prev = np.full((1, 1), np.nan)
    visa_hard = _records(category="do_not_honor", network_code="57", brand="visa")
    assert not rules.allowed(visa_hard, prev, t)[0]
    mc_same_code = _records(category="do_not_honor", network_code="57", brand="mastercard")
    assert rules.allowed(mc_same_code, prev, t)[0]
    mc_03 = _records(
        category="do_not_honor", network_code="05", brand="mastercard", advice_code="03"
    )
    assert not rules.allowed(mc_03, prev, t)[0]
    revoked = _records(category="payment_revoked", network_code="R1")
    assert not rules.allowed(revoked, prev, t)[0]


def test_rules_mastercard_advice_delay_and_daily_cap() -> None:
    rec = _records(
        category="velocity_exceeded", network_code="61", brand="mastercard", advice_code="25"
    )
    f0 = FAILED.timestamp()
    prev = np.full((1, 1), np.nan)
    assert not rules.allowed(rec, prev, np.array([f0 + 23 * 3600.0]))[0]
    assert rules.allowed(rec, prev, np.array([f0 + 25 * 3600.0]))[0]
    plain = _records(category="do_not_honor", network_code="05", brand="mastercard")
    nine = (f0 + np.arange(1, 10, dtype=np.float64) * 600.0)[None, :]
    assert not rules.allowed(plain, nine, np.array([f0 + 6000.0 + 600.0]))[0]
    spaced = (f0 + np.arange(1, 10) * 7200.0)[None, :]
    t_ok = np.array([f0 + 10 * 7200.0 + 3600.0])
    counted = rules.count_violations(plain, np.concatenate([spaced, t_ok[:, None]], axis=1))
    assert counted[0] == 1  # the tenth retry is the 11th decline within 24 h


def test_violation_count_is_zero_for_a_plain_schedule() -> None:
    rec = _records()
    f0 = FAILED.timestamp()
    attempts = np.array([[f0 + DAY, f0 + 3 * DAY, f0 + 7 * DAY, np.nan]])
    assert rules.count_violations(rec, attempts)[0] == 0
    hard = _records(category="lost_stolen", network_code="41")
    assert rules.count_violations(hard, attempts)[0] == 3
    assert taxonomy.retry_advice("do_not_honor", "visa", "05", "01") == taxonomy.ADVICE_UPDATE


def test_every_feature_is_explained_in_plain_words() -> None:
    """A decision's explanation names features in words; a feature without them would show its
    column name to a merchant."""
    assert [f for f in FEATURE_LIST.features if f not in _LABELS] == []
