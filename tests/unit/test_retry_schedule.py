"""Scheduling: the fixed schedule, the candidate grid and the control group."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from app.enums import Actor, Advice, AttemptOutcome, CardFunding, DeclineCategory, RetryStrategy
from app.retry.events import DecisionMade
from app.retry.rules import (
    AttemptRecord,
    DeclineView,
    PaymentLedger,
    RetryPolicyView,
    evaluate,
)
from app.retry.schedule import (
    CONTROL_SHARE,
    Decision,
    PaymentView,
    Scheduler,
    candidate_times,
    decline_aware,
    effective_policy,
    fixed_schedule,
    in_control_group,
)

FAILED_AT = datetime(2026, 3, 2, 10, 17, tzinfo=UTC)
DECLINE = DeclineView(DeclineCategory.INSUFFICIENT_FUNDS, True, Advice.RETRY, FAILED_AT)
POLICY = RetryPolicyView(fixed_schedule_days=(1, 3, 7), window_days=10)
PAYMENT = PaymentView(
    payment_id="pay_1",
    merchant_id="m_1",
    first_failed_at=FAILED_AT,
    amount_minor=1999,
    currency="EUR",
    network="visa",
    funding=CardFunding.DEBIT,
    decline=DECLINE,
)
LEDGER = PaymentLedger(network="visa", first_failed_at=FAILED_AT, last_decline=DECLINE)


def retry(at: datetime) -> AttemptRecord:
    return AttemptRecord(
        at, Actor.PORTAL, AttemptOutcome.DECLINED, replace(DECLINE, declined_at=at)
    )


def _declined(category: DeclineCategory, **kw: object) -> PaymentView:
    decline = DeclineView(category, True, Advice.RETRY, FAILED_AT)
    return replace(PAYMENT, decline=decline, **kw)  # type: ignore[arg-type]


def test_decline_aware_rules_satisfy_the_interface_and_retry_by_category() -> None:
    scheduler: Scheduler = decline_aware
    policy = RetryPolicyView(window_days=20, min_hours_between_attempts=1)
    candidates = candidate_times(ledger=LEDGER, policy=policy, now=FAILED_AT)
    cases = {
        DeclineCategory.PROCESSING_ERROR: (2, "processing_error, 2 hours after the first failure"),
        DeclineCategory.VELOCITY_EXCEEDED: (25, "velocity_exceeded, 25 hours after the first"),
        DeclineCategory.DO_NOT_HONOR: (24, "do_not_honor, 24 hours after the first failure"),
    }
    for category, (hours, why) in cases.items():
        decision = scheduler(_declined(category), (), candidates, policy=policy, now=FAILED_AT)
        assert decision.strategy is RetryStrategy.DECLINE_AWARE
        assert decision.reason.startswith(f"decline-aware rules: {why}")
        # The target is off the hourly grid: the first allowed time from it.
        target = FAILED_AT + timedelta(hours=hours)
        assert decision.chosen_at is not None
        assert target <= decision.chosen_at < target + timedelta(hours=1)


def test_decline_aware_rules_wait_for_paydays_in_the_customers_morning() -> None:
    # 2026-03-02 is a Monday: the next paydays are Friday the 6th, Friday the 13th, the 15th
    # and Friday the 20th, each at 09:00 in the customer's time zone (EST, then EDT from the 8th).
    payment = _declined(DeclineCategory.INSUFFICIENT_FUNDS, customer_timezone="America/New_York")
    policy = RetryPolicyView(window_days=30)
    paydays = [datetime(2026, 3, 6, 14, tzinfo=UTC)]
    paydays += [datetime(2026, 3, d, 13, tzinfo=UTC) for d in (13, 15, 20)]
    history: list[AttemptRecord] = []
    for payday in paydays:
        decision = decline_aware(payment, history, [payday], policy=policy, now=FAILED_AT)
        assert decision.chosen_at == payday
        assert (
            decision.reason
            == f"decline-aware rules: insufficient funds, payday {payday.isoformat()}"
        )
        history.append(retry(payday))
    done = decline_aware(payment, history, paydays, policy=policy, now=FAILED_AT)
    assert done == Decision(
        None, "decline-aware rules complete: all retries used", RetryStrategy.DECLINE_AWARE
    )


def test_decline_aware_rules_read_an_unknown_customer_zone_as_the_policys() -> None:
    # A stored zone that is not a zone must not stop the decision: the policy's zone applies.
    policy = RetryPolicyView(window_days=30, timezone="America/New_York")
    payday = datetime(2026, 3, 6, 14, tzinfo=UTC)
    for stored in ("Not/AZone", "../etc", ""):
        payment = _declined(DeclineCategory.INSUFFICIENT_FUNDS, customer_timezone=stored)
        decision = decline_aware(payment, (), [payday], policy=policy, now=FAILED_AT)
        assert decision.chosen_at == payday


def test_decline_aware_rules_without_an_allowed_time_choose_none() -> None:
    payment = _declined(DeclineCategory.DO_NOT_HONOR)
    decision = decline_aware(payment, (), [FAILED_AT], policy=POLICY, now=FAILED_AT)
    assert decision.chosen_at is None
    assert "no allowed time" in decision.reason


def test_fixed_schedule_satisfies_the_interface() -> None:
    scheduler: Scheduler = fixed_schedule
    candidates = candidate_times(ledger=LEDGER, policy=POLICY, now=FAILED_AT)
    decision = scheduler(PAYMENT, (), candidates, policy=POLICY, now=FAILED_AT)
    assert decision == Decision(
        FAILED_AT + timedelta(days=1),
        "fixed schedule: day 1 after the first failure",
        RetryStrategy.FIXED_SCHEDULE,
    )
    assert decision.to_event() == DecisionMade(
        decision.chosen_at, decision.reason, RetryStrategy.FIXED_SCHEDULE
    )


def test_fixed_schedule_takes_the_day_after_the_latest_attempt() -> None:
    history = (retry(FAILED_AT + timedelta(days=1)),)
    now = FAILED_AT + timedelta(days=1, minutes=5)
    candidates = candidate_times(ledger=replace(LEDGER, retries=history), policy=POLICY, now=now)
    decision = fixed_schedule(PAYMENT, history, candidates, policy=POLICY, now=now)
    assert decision.chosen_at == FAILED_AT + timedelta(days=3)


def test_fixed_schedule_moves_to_the_first_allowed_candidate() -> None:
    policy = replace(POLICY, quiet_hours_start=9, quiet_hours_end=12)
    candidates = candidate_times(ledger=LEDGER, policy=policy, now=FAILED_AT)
    decision = fixed_schedule(PAYMENT, (), candidates, policy=policy, now=FAILED_AT)
    assert decision.chosen_at == datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    assert "first allowed time" in decision.reason


def test_fixed_schedule_ends_when_its_days_are_used() -> None:
    history = tuple(retry(FAILED_AT + timedelta(days=d)) for d in (1, 3, 7))
    now = FAILED_AT + timedelta(days=7, hours=1)
    decision = fixed_schedule(PAYMENT, history, [now + timedelta(days=1)], policy=POLICY, now=now)
    assert decision.chosen_at is None
    assert "complete" in decision.reason


def test_fixed_schedule_without_candidates() -> None:
    decision = fixed_schedule(PAYMENT, (), (), policy=POLICY, now=FAILED_AT)
    assert decision.chosen_at is None


def test_candidates_are_exactly_the_allowed_grid_points() -> None:
    policy = replace(
        POLICY,
        quiet_hours_start=22,
        quiet_hours_end=7,
        timezone="Europe/Berlin",
        min_hours_between_attempts=12,
    )
    card = (
        AttemptRecord(FAILED_AT, Actor.BILLING_SYSTEM, AttemptOutcome.DECLINED),
        AttemptRecord(FAILED_AT + timedelta(days=2), Actor.PROCESSOR, AttemptOutcome.DECLINED),
    )
    led = replace(LEDGER, card_history=card)
    now = FAILED_AT + timedelta(days=2, hours=1)
    got = candidate_times(ledger=led, policy=policy, now=now)
    # Brute force over the same grid: the skipping must not lose or add a point.
    grid = [now]
    tick = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    while tick < policy.window_end(FAILED_AT):
        grid.append(tick)
        tick += timedelta(hours=1)
    grid += [FAILED_AT + timedelta(days=d) for d in policy.fixed_schedule_days]
    expected = sorted(
        t for t in set(grid) if t >= now and evaluate(t, ledger=led, policy=policy).allowed
    )
    assert list(got) == expected
    # Spacing ends at 23:17 in Berlin, inside the quiet hours: 07:00 Berlin is the first.
    assert got[0] == datetime(2026, 3, 5, 6, 0, tzinfo=UTC)
    assert all(t < policy.window_end(FAILED_AT) for t in got)
    # Exact fixed-schedule day 3 at 10:17 is offered, not only the whole hours.
    assert FAILED_AT + timedelta(days=3) in got


def test_no_candidates_when_never_allowed() -> None:
    never = replace(DECLINE, advice=Advice.NEVER)
    assert (
        candidate_times(ledger=replace(LEDGER, last_decline=never), policy=POLICY, now=FAILED_AT)
        == ()
    )


def test_candidate_step_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        candidate_times(ledger=LEDGER, policy=POLICY, now=FAILED_AT, step=timedelta(0))


def test_control_group_is_stable_and_about_ten_percent() -> None:
    ids = [f"pay_{i}" for i in range(20_000)]
    members = [i for i in ids if in_control_group("m_1", i)]
    assert 0.085 < len(members) / len(ids) < 0.115
    assert members == [i for i in ids if in_control_group("m_1", i)]
    # Drawn per merchant: another merchant's control group is a different set.
    other = {i for i in ids if in_control_group("m_2", i)}
    assert set(members) != other
    assert CONTROL_SHARE == 0.10
    assert not any(in_control_group("m_1", i, share=0.0) for i in ids[:100])


def test_effective_policy_forces_the_fixed_schedule_on_the_control_group() -> None:
    model = replace(POLICY, strategy=RetryStrategy.MODEL)
    ids = [f"pay_{i}" for i in range(200)]
    control = next(i for i in ids if in_control_group("m_1", i))
    treated = next(i for i in ids if not in_control_group("m_1", i))
    got = effective_policy(model, merchant_id="m_1", payment_id=control)
    assert got.strategy is RetryStrategy.FIXED_SCHEDULE
    assert effective_policy(model, merchant_id="m_1", payment_id=treated) is model
    assert effective_policy(POLICY, merchant_id="m_1", payment_id=control) is POLICY


def test_effective_policy_draws_the_control_group_with_the_policys_share() -> None:
    ids = [f"pay_{i}" for i in range(2000)]

    def control(percent: int) -> set[str]:
        model = replace(POLICY, strategy=RetryStrategy.MODEL, control_group_percent=percent)
        return {
            i
            for i in ids
            if effective_policy(model, merchant_id="m_1", payment_id=i).strategy
            is RetryStrategy.FIXED_SCHEDULE
        }

    assert control(10) == {i for i in ids if in_control_group("m_1", i)}
    assert control(0) == set()
    half = control(50)
    assert 0.45 < len(half) / len(ids) < 0.55
    # A larger share keeps the smaller one's members: raising it only adds payments.
    assert control(10) < control(30) < half
