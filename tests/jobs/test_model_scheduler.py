"""The model scheduler: allowed candidates only, fallback with its reason, shadow scoring."""

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

import jobs.model
from app.enums import Actor, Advice, AttemptOutcome, CardFunding, DeclineCategory, RetryStrategy
from app.retry.rules import AttemptRecord, DeclineView, RetryPolicyView
from app.retry.schedule import PaymentView
from app.services.customer_success import RECENT_SUCCESSES
from app.services.model_registry import ROLE_ACTING, ROLE_SHADOW
from jobs.model import Loaded, ModelCache, ModelScheduler, failure_row
from jobs.training import gate, simulated
from ml import taxonomy
from ml.artifact import TimingModel, save_model
from ml.features import F32, FEATURE_LIST, build_features, failure_context
from ml.policy import Decision as ModelDecision
from ml.policy import choose
from ml.records import PAST_SUCCESS_SLOTS, FailureRecords, FailureRow
from tests.support.model import SMALL, small_artifact, small_model

NOW = datetime(2026, 10, 5, 9, 30, tzinfo=UTC)
POLICY = RetryPolicyView(strategy=RetryStrategy.MODEL, max_attempts=4, window_days=21)
PAYDAY_FEATURES = (
    "days_since_pay_weekday",
    "days_since_biweekly_phase",
    "days_since_pay_day_of_month",
)


def _payment() -> PaymentView:
    failed = NOW - timedelta(hours=2)
    return PaymentView(
        payment_id=str(uuid.uuid4()),
        merchant_id=str(uuid.uuid4()),
        first_failed_at=failed,
        amount_minor=4999,
        currency="USD",
        network="visa",
        funding=CardFunding.DEBIT,
        decline=DeclineView(
            category=DeclineCategory.INSUFFICIENT_FUNDS,
            retryable=True,
            advice=Advice.RETRY_LATER,
            declined_at=failed,
            network_decline_code="51",
        ),
        customer_timezone="America/New_York",
    )


def _candidates() -> list[datetime]:
    # An irregular allowed set, as rules leave it: gaps, odd minutes, nothing on some days.
    hours = [5, 9, 26, 31, 50, 77, 100, 101, 150, 222, 300]
    return [NOW + timedelta(hours=h, minutes=7 * (h % 3)) for h in hours]


def _loaded() -> Loaded:
    return ModelCache().load(uuid.uuid4(), small_artifact())


def test_model_chooses_only_among_allowed_candidates() -> None:
    scheduler = ModelScheduler(champion=_loaded())
    allowed = _candidates()
    history = [AttemptRecord(NOW - timedelta(hours=1), Actor.PORTAL, AttemptOutcome.DECLINED)]
    decision = scheduler(_payment(), history, allowed, policy=POLICY, now=NOW)
    assert decision.strategy is RetryStrategy.MODEL
    assert decision.chosen_at in allowed
    assert decision.reason.startswith("model: ")
    [record] = scheduler.take_decisions()
    assert record.role == ROLE_ACTING
    assert record.source == "model"
    assert record.chosen_at == decision.chosen_at
    assert record.decided_at == NOW
    assert 0.0 < (record.probability or 0.0) < 1.0
    assert record.expected_recovered_minor > 0
    assert len(record.explanation) == 3
    assert all("chance of success" in str(e["text"]) for e in record.explanation)
    assert scheduler.take_decisions() == []


def test_candidates_in_the_past_are_never_chosen() -> None:
    scheduler = ModelScheduler(champion=_loaded())
    past = [NOW - timedelta(hours=h) for h in (1, 3)]
    decision = scheduler(_payment(), [], past, policy=POLICY, now=NOW)
    assert decision.chosen_at is None


def test_no_champion_falls_back_to_the_decline_aware_rules_with_the_reason() -> None:
    scheduler = ModelScheduler(champion=None)
    decision = scheduler(_payment(), [], _candidates(), policy=POLICY, now=NOW)
    assert decision.strategy is RetryStrategy.DECLINE_AWARE
    assert decision.chosen_at is not None
    assert decision.reason.startswith("decline-aware rules: insufficient funds, payday")
    assert "(model fallback: no champion model)" in decision.reason
    [record] = scheduler.take_decisions()
    assert (record.source, record.model_version_id, record.explanation) == ("fallback", None, [])
    assert record.reason == decision.reason


def test_corrupt_artifact_falls_back_and_says_why() -> None:
    model_id = uuid.uuid4()
    loaded = ModelCache().load(model_id, b"\x00not a model")
    assert loaded.model is None
    scheduler = ModelScheduler(champion=loaded)
    decision = scheduler(_payment(), [], _candidates(), policy=POLICY, now=NOW)
    assert decision.strategy is RetryStrategy.DECLINE_AWARE
    assert f"model {model_id} unusable: not a model artifact" in decision.reason
    assert scheduler.take_decisions()[0].model_version_id == model_id


def test_feature_list_mismatch_falls_back_and_says_why() -> None:
    doc = json.loads(small_artifact())
    doc["feature_list"]["version"] = 99
    loaded = ModelCache().load(uuid.uuid4(), json.dumps(doc).encode())
    scheduler = ModelScheduler(champion=loaded)
    decision = scheduler(_payment(), [], _candidates(), policy=POLICY, now=NOW)
    assert decision.strategy is RetryStrategy.DECLINE_AWARE
    assert "attempt_success/v99" in decision.reason
    assert f"does not match the served {FEATURE_LIST.tag}" in decision.reason


def test_scoring_failure_falls_back_and_says_why() -> None:
    good = _loaded()
    assert good.model is not None
    broken = TimingModel(
        booster=good.model.booster,
        calibrator_x=np.array([0.0, 1.0]),
        calibrator_y=np.array([np.nan, np.nan]),
        metadata=good.model.metadata,
    )
    scheduler = ModelScheduler(champion=Loaded(good.id, broken))
    decision = scheduler(_payment(), [], _candidates(), policy=POLICY, now=NOW)
    assert decision.strategy is RetryStrategy.DECLINE_AWARE
    assert "model failed: non-finite score" in decision.reason


def test_cache_parses_an_artifact_once_per_id() -> None:
    cache = ModelCache(size=2)
    model_id = uuid.uuid4()
    first = cache.load(model_id, small_artifact())
    assert cache.get(model_id) is first
    cache.load(uuid.uuid4(), small_artifact())
    cache.load(uuid.uuid4(), small_artifact())
    assert cache.get(model_id) is None  # evicted, least recently used


def test_shadow_scores_alongside_without_acting() -> None:
    champion = _loaded()
    shadow = ModelCache().load(uuid.uuid4(), small_artifact())
    scheduler = ModelScheduler(champion=champion, shadow=shadow)
    decision = scheduler(_payment(), [], _candidates(), policy=POLICY, now=NOW)
    by_role = {r.role: r for r in scheduler.take_decisions()}
    assert set(by_role) == {ROLE_ACTING, ROLE_SHADOW}
    acting, watched = by_role[ROLE_ACTING], by_role[ROLE_SHADOW]
    assert acting.model_version_id == champion.id
    assert watched.model_version_id == shadow.id
    assert acting.chosen_at == decision.chosen_at
    # The same model scores the same candidates the same way.
    assert watched.chosen_at == acting.chosen_at


def test_failure_row_reads_only_what_the_view_holds() -> None:
    view = _payment()
    row = failure_row(view)
    assert (row.category, row.network_code, row.funding, row.brand) == (
        "insufficient_funds",
        "51",
        "debit",
        "visa",
    )
    assert row.tz_offset_minutes == -240  # New York in October
    assert row.country is None
    assert row.past_success_at == ()


# Fridays two weeks apart, on days of the month far from the failure's (the 5th).
PAYDAYS = tuple(
    datetime(2026, month, day, 15, tzinfo=UTC)
    for month, day in ((8, 14), (8, 28), (9, 11), (9, 25))
)


def _features(view: PaymentView) -> dict[str, F32]:
    """The builder's columns for the view's row over the candidate grid, as served."""
    context = failure_context(FailureRecords.from_rows([failure_row(view)]))
    t = np.array([c.timestamp() for c in _candidates()])
    x = build_features(context, np.zeros(t.size, dtype=np.intp), t, np.full((t.size, 1), np.nan))
    return {name: x[:, i] for i, name in enumerate(FEATURE_LIST.features)}


def test_past_successes_give_the_served_model_payday_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view = replace(_payment(), issuer_country="GB", past_success_at=PAYDAYS)
    row = failure_row(view)
    assert (row.country, row.past_success_at) == ("GB", PAYDAYS)
    features = _features(view)
    assert (features["country"] == taxonomy.COUNTRIES.index("GB")).all()
    assert (features["n_past_success"] == 4).all()
    assert (features["pay_weekday_strength"] == 1.0).all()
    for name in PAYDAY_FEATURES:
        assert np.isfinite(features[name]).all(), name
    # Friday paydays: a Friday candidate is 0 days after one, a Monday one 3 days after.
    weekday = features["days_since_pay_weekday"]
    assert set(np.floor(weekday[features["weekday"] == 4])) == {0.0}
    assert set(np.floor(weekday[features["weekday"] == 0])) == {3.0}
    # Without them the same features are unknown.
    bare = _features(_payment())
    assert (bare["n_past_success"] == 0).all()
    for name in PAYDAY_FEATURES:
        assert np.isnan(bare[name]).all(), name
    # The served model scores the payment with them.
    scored: list[FailureRow] = []

    def spy(model: TimingModel, row: FailureRow, *args: Any) -> ModelDecision:
        scored.append(row)
        return choose(model, row, *args)

    monkeypatch.setattr(jobs.model, "choose", spy)
    decision = ModelScheduler(champion=_loaded())(view, [], _candidates(), policy=POLICY, now=NOW)
    assert decision.strategy is RetryStrategy.MODEL
    assert [(r.country, r.past_success_at) for r in scored] == [("GB", PAYDAYS)]


def test_views_hold_as_many_successes_as_the_model_reads() -> None:
    assert RECENT_SUCCESSES == PAST_SUCCESS_SLOTS


def test_training_is_reproducible_with_a_seed() -> None:
    first, held = small_model()
    again, held_again = simulated(3000, SMALL)
    assert save_model(again.model) == save_model(first.model)
    assert again.metrics == first.metrics
    assert np.array_equal(held.attempts, held_again.attempts, equal_nan=True)


def test_gate_promotes_a_better_challenger_and_keeps_a_better_champion() -> None:
    result, held = small_model()
    trained = result.model
    flat = TimingModel(
        booster=trained.booster,
        calibrator_x=np.array([0.0, 1.0]),
        calibrator_y=np.array([0.2, 0.2]),
        metadata=dict(trained.metadata),
    )
    champion_id = uuid.uuid4()
    limits = {"min_rows": 200}
    beats = gate(trained, flat, champion_id, held, **limits)
    assert beats.promote
    assert beats.champion_id == champion_id
    assert beats.window_start is not None
    assert beats.window_start.timestamp() > trained.metadata["data_window"][1]
    loses = gate(flat, trained, champion_id, held, **limits)
    assert not loses.promote
    assert "champion stays" in loses.reason
    assert loses.champion_metrics is not None
