"""Table tests of the retry state machine: every (state, event) pair, then each branch."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    DeclineCategory,
    EndAction,
    PaymentState,
    RetryStrategy,
)
from app.retry import events as ev
from app.retry.rules import AttemptRecord, DeclineView, PaymentLedger, RetryPolicyView
from app.retry.state_machine import (
    ALLOWED_TRANSITIONS,
    ILLEGAL_EVENTS,
    attempt_idempotency_key,
    transition,
)

S = PaymentState
FAILED_AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
NOW = FAILED_AT + timedelta(days=1)
POLICY = RetryPolicyView()


def soft(at: datetime = FAILED_AT, **kw: object) -> DeclineView:
    base = DeclineView(DeclineCategory.INSUFFICIENT_FUNDS, True, Advice.RETRY, at)
    return replace(base, **kw)  # type: ignore[arg-type]


def hard(at: datetime = FAILED_AT) -> DeclineView:
    return DeclineView(DeclineCategory.CARD_EXPIRED, False, Advice.UPDATE_CREDENTIALS, at)


ORIGINAL = AttemptRecord(FAILED_AT, Actor.BILLING_SYSTEM, AttemptOutcome.DECLINED, soft())
LEDGER = PaymentLedger(
    network="visa",
    first_failed_at=FAILED_AT,
    last_decline=soft(),
    card_history=(ORIGINAL,),
    customer_history=(ORIGINAL,),
)

SAMPLES: dict[type[ev.Event], ev.Event] = {
    ev.FailureIngested: ev.FailureIngested(soft()),
    ev.DecisionMade: ev.DecisionMade(NOW + timedelta(days=1), "model", RetryStrategy.MODEL),
    ev.AttemptStarted: ev.AttemptStarted(),
    ev.AttemptSucceeded: ev.AttemptSucceeded(),
    ev.AttemptDeclined: ev.AttemptDeclined(soft(NOW)),
    ev.AttemptAbandoned: ev.AttemptAbandoned("connect timeout"),
    ev.ExternalAttemptDeclined: ev.ExternalAttemptDeclined(soft(NOW), Actor.PROCESSOR),
    ev.PaidElsewhere: ev.PaidElsewhere(Actor.CUSTOMER),
    ev.SubscriptionCanceled: ev.SubscriptionCanceled(),
    ev.InvoiceVoided: ev.InvoiceVoided(),
    ev.CustomerDeleted: ev.CustomerDeleted("customer cus_A is deleted"),
    ev.CredentialUpdated: ev.CredentialUpdated(NOW, Actor.CUSTOMER),
    ev.PolicyChanged: ev.PolicyChanged(),
    ev.WindowExpired: ev.WindowExpired(),
    ev.MerchantPaused: ev.MerchantPaused(),
    ev.MerchantResumed: ev.MerchantResumed(),
    ev.RecoveryCanceled: ev.RecoveryCanceled("the customer asked"),
}

# Expected outcome of each pair with the default policy and a soft-declined ledger: the new
# state, NOOP (same state, nothing to store) or ILLEGAL. Columns follow EVENT_TYPES. Written out
# here, not derived from ALLOWED_TRANSITIONS or ILLEGAL_EVENTS: the tests below check those
# tables and transition() against it.
NOOP, ILLEGAL = "=", "!"
PE, SC, RE, RC, EX, NR, CA = (
    S.PENDING,
    S.SCHEDULED,
    S.RETRYING,
    S.RECOVERED,
    S.EXHAUSTED,
    S.NOT_RETRYABLE,
    S.CANCELED,
)
_, X = NOOP, ILLEGAL
# fmt: off
TABLE: dict[PaymentState, tuple[str, ...]] = {
    #    Fail Dec Start Succ Decl Aband Ext Paid SubC Void Cust Cred Pol Win Pause Res Stop
    PE: (PE,  SC, X,    RC,  X,   X,    PE, RC,  CA,  CA,  CA,  PE,  PE, _,  _,    PE, CA),
    SC: (_,   SC, RE,   RC,  X,   X,    SC, RC,  CA,  CA,  CA,  SC,  SC, _,  PE,   _,  CA),
    RE: (_,   X,  X,    RC,  SC,  SC,   RE, RC,  CA,  CA,  CA,  RE,  _,  _,  _,    _,  CA),
    RC: (_,   _,  _,    RC,  _,   _,    _,  _,   _,   _,   _,   _,   _,  _,  _,    _,  _),
    CA: (_,   _,  _,    CA,  _,   _,    _,  _,   _,   _,   _,   _,   _,  _,  _,    _,  _),
    EX: (_,   _,  _,    RC,  _,   _,    _,  RC,  _,   _,   _,   _,   _,  _,  _,    _,  _),
    NR: (_,   _,  _,    RC,  _,   _,    _,  RC,  _,   _,   _,   PE,  _,  _,  _,    _,  _),
}
# fmt: on
EXPECTED: dict[tuple[PaymentState, type[ev.Event]], str] = {
    (state, event_type): cell
    for state, row in TABLE.items()
    for event_type, cell in zip(ev.EVENT_TYPES, row, strict=True)
}

PAIRS = sorted(EXPECTED, key=lambda p: (list(S).index(p[0]), ev.EVENT_TYPES.index(p[1])))


def run(
    state: PaymentState,
    event: ev.Event,
    *,
    policy: RetryPolicyView = POLICY,
    ledger: PaymentLedger = LEDGER,
    now: datetime = NOW,
) -> ev.Transition:
    return transition(state, event, policy=policy, ledger=ledger, now=now)


def kinds(t: ev.Transition) -> list[type[object]]:
    return [type(a) for a in t.actions]


def test_table_covers_every_pair() -> None:
    assert len(EXPECTED) == len(PaymentState) * len(ev.EVENT_TYPES) == 119
    assert set(SAMPLES) == set(ev.EVENT_TYPES)


@pytest.mark.parametrize(
    ("state", "event_type"), PAIRS, ids=[f"{s}-{e.__name__}" for s, e in PAIRS]
)
def test_every_state_event_pair(state: PaymentState, event_type: type[ev.Event]) -> None:
    expected = EXPECTED[(state, event_type)]
    event = SAMPLES[event_type]
    if expected == ILLEGAL:
        assert (state, event_type) in ILLEGAL_EVENTS
        with pytest.raises(ev.IllegalTransitionError) as info:
            run(state, event)
        assert info.value.state is state
        return
    t = run(state, event)
    assert (state, event_type) not in ILLEGAL_EVENTS
    if expected == NOOP:
        assert t.new_state is state
        assert not t.changed
        assert t.actions == ()
        return
    assert t.new_state is S(expected)
    assert t.new_state in ALLOWED_TRANSITIONS[state]
    assert t.changed
    records = [a for a in t.actions if isinstance(a, ev.RecordTransition)]
    assert len(records) == 1
    assert records[0].from_state is state
    assert records[0].to_state is t.new_state
    assert records[0].event == event.name
    assert records[0].at == NOW
    # The retry time exists exactly while SCHEDULED.
    if state is S.SCHEDULED and t.new_state is not S.SCHEDULED:
        assert ev.ClearSchedule in kinds(t)
    if t.new_state is S.SCHEDULED and state is not S.SCHEDULED:
        assert t.next_retry_at is not None
    if t.new_state is not S.SCHEDULED:
        assert ev.ScheduleRetry not in kinds(t)
    emitted = [a.name for a in t.actions if isinstance(a, ev.EmitEvent)]
    if t.new_state is not state:
        assert f"payment.{t.new_state.lower()}" in emitted
    # Only a claim of a SCHEDULED payment may start a charge.
    if ev.EnqueueAttempt in kinds(t):
        assert (state, event_type) == (S.SCHEDULED, ev.AttemptStarted)


def test_illegal_table_matches_expectations() -> None:
    assert {p for p, cell in EXPECTED.items() if cell == ILLEGAL} == ILLEGAL_EVENTS


def test_terminal_states_only_leave_as_documented() -> None:
    assert ALLOWED_TRANSITIONS[S.RECOVERED] == {S.RECOVERED}
    assert ALLOWED_TRANSITIONS[S.CANCELED] == {S.CANCELED}
    assert ALLOWED_TRANSITIONS[S.EXHAUSTED] == {S.EXHAUSTED, S.RECOVERED}
    assert ALLOWED_TRANSITIONS[S.NOT_RETRYABLE] == {S.NOT_RETRYABLE, S.RECOVERED, S.PENDING}
    for (state, _), cell in EXPECTED.items():
        if cell not in {NOOP, ILLEGAL}:
            assert S(cell) in ALLOWED_TRANSITIONS[state]


# --- Branches ---------------------------------------------------------------------------------


def test_ingest_hard_decline_is_not_retryable() -> None:
    t = run(S.PENDING, ev.FailureIngested(hard()))
    assert t.new_state is S.NOT_RETRYABLE
    assert t.blocking_rule == "update_credentials"


def test_ingest_stop_payment_cancels_the_subscription_retries() -> None:
    revoked = DeclineView(DeclineCategory.PAYMENT_REVOKED, False, Advice.NEVER, FAILED_AT)
    t = run(S.PENDING, ev.FailureIngested(revoked))
    assert t.new_state is S.NOT_RETRYABLE
    assert ev.CancelSubscriptionRetries in kinds(t)
    assert t.blocking_rule == "stop_payment"


def test_ingest_visa_category_1_is_not_retryable() -> None:
    decline = soft(network_decline_code="43")
    t = run(S.PENDING, ev.FailureIngested(decline))
    assert t.new_state is S.NOT_RETRYABLE
    assert t.blocking_rule == "visa_category_1"


def test_ingest_with_recovery_off_is_recorded_without_a_decision() -> None:
    t = run(S.PENDING, ev.FailureIngested(soft()), policy=replace(POLICY, enabled=False))
    assert t.new_state is S.PENDING
    assert t.changed
    assert ev.RequestDecision not in kinds(t)


def test_ingest_after_the_window_exhausts() -> None:
    late = FAILED_AT + timedelta(days=POLICY.window_days)
    t = run(S.PENDING, ev.FailureIngested(soft()), now=late)
    assert t.new_state is S.EXHAUSTED
    assert ev.ApplyEndAction(EndAction.MARK_EXHAUSTED) in t.actions


def test_decision_is_kept_when_allowed() -> None:
    chosen = NOW + timedelta(hours=5)
    t = run(S.PENDING, ev.DecisionMade(chosen, "payday", RetryStrategy.MODEL))
    assert t.next_retry_at == chosen
    schedule = t.actions[0]
    assert isinstance(schedule, ev.ScheduleRetry)
    assert schedule.strategy is RetryStrategy.MODEL
    assert schedule.reason == "payday"
    assert schedule.blocking_rule is t.blocking_rule is None


def test_decision_in_quiet_hours_moves_to_their_end() -> None:
    policy = replace(POLICY, quiet_hours_start=22, quiet_hours_end=7, timezone="Europe/Paris")
    chosen = datetime(2026, 3, 3, 23, 0, tzinfo=UTC)  # 00:00 in Paris
    t = run(S.PENDING, ev.DecisionMade(chosen, "model", RetryStrategy.MODEL), policy=policy)
    assert t.next_retry_at == datetime(2026, 3, 4, 6, 0, tzinfo=UTC)  # 07:00 in Paris
    assert t.blocking_rule == "quiet_hours"
    schedule = t.actions[0]
    assert isinstance(schedule, ev.ScheduleRetry)
    assert schedule.blocking_rule == "quiet_hours"


def test_decision_in_the_past_is_placed_now_at_the_earliest() -> None:
    t = run(S.PENDING, ev.DecisionMade(NOW - timedelta(days=3), "now", RetryStrategy.MODEL))
    assert t.next_retry_at == NOW


def test_decision_past_the_window_exhausts() -> None:
    chosen = FAILED_AT + timedelta(days=30)
    t = run(S.SCHEDULED, ev.DecisionMade(chosen, "late", RetryStrategy.MODEL))
    assert t.new_state is S.EXHAUSTED
    assert t.blocking_rule == "retry_window"
    assert kinds(t)[0] is ev.ClearSchedule


def test_decision_without_a_time_exhausts() -> None:
    t = run(S.PENDING, ev.DecisionMade(None, "nothing worth trying", RetryStrategy.MODEL))
    assert t.new_state is S.EXHAUSTED
    assert "nothing worth trying" in t.reason


def test_decision_while_disabled_holds_a_scheduled_payment() -> None:
    off = replace(POLICY, enabled=False)
    event = ev.DecisionMade(NOW, "x", RetryStrategy.MODEL)
    held = run(S.SCHEDULED, event, policy=off)
    assert held.new_state is S.PENDING
    assert ev.ClearSchedule in kinds(held)
    dropped = run(S.PENDING, event, policy=off)
    assert not dropped.changed


def test_claim_numbers_attempts_by_portal_retries_only() -> None:
    external = AttemptRecord(NOW - timedelta(days=1), Actor.PROCESSOR, AttemptOutcome.DECLINED)
    portal = AttemptRecord(
        FAILED_AT + timedelta(hours=1), Actor.PORTAL, AttemptOutcome.DECLINED, soft()
    )
    ledger = replace(LEDGER, retries=(portal, external))
    later = NOW + timedelta(days=1)
    t = run(S.SCHEDULED, ev.AttemptStarted(), ledger=replace(ledger, card_history=()), now=later)
    assert t.new_state is S.RETRYING
    assert ev.RecordAttempt(2, later) in t.actions
    assert ev.EnqueueAttempt(2) in t.actions
    assert attempt_idempotency_key("p1", 2) == attempt_idempotency_key("p1", 2) == "retry-p1-2"
    # The timeline names it as the API does: the payment's fourth attempt (the failed charge,
    # the portal's first retry and the processor's retry came before it).
    assert t.reason == "attempt 4 started"


def test_claim_too_early_reschedules_instead_of_charging() -> None:
    recent = AttemptRecord(NOW - timedelta(hours=2), Actor.PROCESSOR, AttemptOutcome.DECLINED)
    ledger = replace(LEDGER, card_history=(ORIGINAL, recent))
    t = run(S.SCHEDULED, ev.AttemptStarted(), ledger=ledger)
    assert t.new_state is S.SCHEDULED
    assert ev.EnqueueAttempt not in kinds(t)
    assert t.next_retry_at == recent.at + timedelta(hours=24)
    assert t.blocking_rule == "min_spacing"


def test_claim_blocked_forever_ends() -> None:
    never = soft(NOW - timedelta(hours=30), advice=Advice.NEVER)
    other = AttemptRecord(never.declined_at, Actor.BILLING_SYSTEM, AttemptOutcome.DECLINED, never)
    ledger = replace(LEDGER, card_history=(ORIGINAL, other))
    t = run(S.SCHEDULED, ev.AttemptStarted(), ledger=ledger)
    assert t.new_state is S.NOT_RETRYABLE
    assert t.blocking_rule == "decline_advice_never"


def test_claim_with_recovery_off_holds() -> None:
    t = run(S.SCHEDULED, ev.AttemptStarted(), policy=replace(POLICY, enabled=False))
    assert t.new_state is S.PENDING
    assert ev.EnqueueAttempt not in kinds(t)


def test_soft_decline_falls_back_to_the_next_fixed_day() -> None:
    t = run(S.RETRYING, ev.AttemptDeclined(soft(NOW)))
    assert t.new_state is S.SCHEDULED
    assert t.next_retry_at == FAILED_AT + timedelta(days=3)
    assert ev.RequestDecision not in kinds(t)


def test_soft_decline_under_a_model_policy_also_asks_the_model() -> None:
    policy = replace(POLICY, strategy=RetryStrategy.MODEL)
    t = run(S.RETRYING, ev.AttemptDeclined(soft(NOW)), policy=policy)
    assert t.new_state is S.SCHEDULED
    schedule = t.actions[0]
    assert isinstance(schedule, ev.ScheduleRetry)
    assert schedule.strategy is RetryStrategy.FIXED_SCHEDULE
    assert ev.RequestDecision in kinds(t)


def test_decline_after_the_last_fixed_day() -> None:
    late = FAILED_AT + timedelta(days=15)
    fixed = run(S.RETRYING, ev.AttemptDeclined(soft(late)), now=late)
    assert fixed.new_state is S.EXHAUSTED
    assert fixed.blocking_rule == "fixed_schedule_complete"
    model = replace(POLICY, strategy=RetryStrategy.MODEL)
    t = run(S.RETRYING, ev.AttemptDeclined(soft(late)), now=late, policy=model)
    assert t.new_state is S.SCHEDULED
    assert t.next_retry_at == late + timedelta(hours=24)


def test_hard_decline_ends_not_retryable() -> None:
    t = run(S.RETRYING, ev.AttemptDeclined(hard(NOW)))
    assert t.new_state is S.NOT_RETRYABLE


def test_decline_at_max_attempts_exhausts_with_end_action() -> None:
    policy = replace(POLICY, max_attempts=1, end_action=EndAction.CANCEL_SUBSCRIPTION)
    t = run(S.RETRYING, ev.AttemptDeclined(soft(NOW)), policy=policy)
    assert t.new_state is S.EXHAUSTED
    assert ev.ApplyEndAction(EndAction.CANCEL_SUBSCRIPTION) in t.actions
    assert t.blocking_rule == "max_attempts"


def test_decline_resolves_the_in_flight_attempt_instead_of_counting_it_twice() -> None:
    flying = AttemptRecord(NOW, Actor.PORTAL, None)
    ledger = replace(
        LEDGER,
        retries=(flying,),
        card_history=(ORIGINAL, flying),
        customer_history=(ORIGINAL, flying),
    )
    policy = replace(POLICY, max_attempts=2)
    t = run(S.RETRYING, ev.AttemptDeclined(soft(NOW)), ledger=ledger, policy=policy)
    assert t.new_state is S.SCHEDULED
    # Without the in-flight record the decline is appended: one retry either way.
    t2 = run(S.RETRYING, ev.AttemptDeclined(soft(NOW)), policy=policy)
    assert t2.new_state is S.SCHEDULED
    assert t.next_retry_at == t2.next_retry_at


def test_decline_while_disabled_holds() -> None:
    t = run(S.RETRYING, ev.AttemptDeclined(soft(NOW)), policy=replace(POLICY, enabled=False))
    assert t.new_state is S.PENDING
    assert ev.ScheduleRetry not in kinds(t)


def test_abandoned_attempt_does_not_count() -> None:
    flying = AttemptRecord(NOW, Actor.PORTAL, None)
    ledger = replace(
        LEDGER, retries=(flying,), card_history=(ORIGINAL, flying), customer_history=(flying,)
    )
    t = run(S.RETRYING, ev.AttemptAbandoned("timeout"), ledger=ledger)
    assert t.new_state is S.SCHEDULED
    # The in-flight record is dropped, so min spacing runs from the original failure.
    assert t.next_retry_at == NOW


def test_external_hard_decline_ends_a_scheduled_payment() -> None:
    event = ev.ExternalAttemptDeclined(hard(NOW), Actor.PROCESSOR)
    t = run(S.SCHEDULED, event)
    assert t.new_state is S.NOT_RETRYABLE
    assert kinds(t)[0] is ev.ClearSchedule
    record = next(a for a in t.actions if isinstance(a, ev.RecordTransition))
    assert record.actor is Actor.PROCESSOR


def test_external_retries_count_toward_max_attempts() -> None:
    event = ev.ExternalAttemptDeclined(soft(NOW), Actor.BILLING_SYSTEM)
    t = run(S.PENDING, event, policy=replace(POLICY, max_attempts=1))
    assert t.new_state is S.EXHAUSTED


def test_success_on_a_recovered_payment_raises_an_alert() -> None:
    for state in (S.RECOVERED, S.CANCELED):
        t = run(state, ev.AttemptSucceeded())
        assert t.new_state is state
        assert ev.AlertDuplicateCharge in kinds(t)
        assert ev.EmitEvent("payment.duplicate_charge") in t.actions


def test_paid_elsewhere_is_attributed() -> None:
    t = run(S.SCHEDULED, ev.PaidElsewhere(Actor.PROCESSOR))
    record = next(a for a in t.actions if isinstance(a, ev.RecordTransition))
    assert record.actor is Actor.PROCESSOR
    assert t.reason == "paid by processor"


def test_new_card_lifts_a_hard_decline() -> None:
    ledger = replace(LEDGER, last_decline=hard())
    t = run(S.NOT_RETRYABLE, ev.CredentialUpdated(NOW, Actor.PROCESSOR), ledger=ledger)
    assert t.new_state is S.PENDING
    assert ev.RequestDecision in kinds(t)


def test_new_card_does_not_lift_a_stop_payment() -> None:
    revoked = DeclineView(DeclineCategory.PAYMENT_REVOKED, False, Advice.NEVER, FAILED_AT)
    ledger = replace(LEDGER, last_decline=revoked)
    t = run(S.NOT_RETRYABLE, ev.CredentialUpdated(NOW, Actor.CUSTOMER), ledger=ledger)
    assert t.new_state is S.NOT_RETRYABLE
    assert not t.changed
    assert t.blocking_rule == "stop_payment"


def test_new_card_does_not_reopen_after_the_window() -> None:
    late = FAILED_AT + timedelta(days=POLICY.window_days, hours=1)
    ledger = replace(LEDGER, last_decline=hard())
    t = run(S.NOT_RETRYABLE, ev.CredentialUpdated(late, Actor.CUSTOMER), ledger=ledger, now=late)
    assert t.new_state is S.NOT_RETRYABLE


def test_policy_change_can_end_or_hold() -> None:
    excluded = replace(
        POLICY, excluded_decline_categories=frozenset({DeclineCategory.INSUFFICIENT_FUNDS})
    )
    assert run(S.SCHEDULED, ev.PolicyChanged(), policy=excluded).new_state is S.NOT_RETRYABLE
    off = replace(POLICY, enabled=False)
    assert run(S.SCHEDULED, ev.PolicyChanged(), policy=off).new_state is S.PENDING
    assert not run(S.PENDING, ev.PolicyChanged(), policy=off).changed


def test_window_expired_exhausts_once_the_window_is_over() -> None:
    late = FAILED_AT + timedelta(days=POLICY.window_days)
    for state in (S.PENDING, S.SCHEDULED):
        t = run(state, ev.WindowExpired(), now=late)
        assert t.new_state is S.EXHAUSTED
        assert ev.ApplyEndAction(POLICY.end_action) in t.actions


def test_resume_with_recovery_still_off_is_a_no_op() -> None:
    t = run(S.PENDING, ev.MerchantResumed(), policy=replace(POLICY, enabled=False))
    assert not t.changed


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        run(S.PENDING, ev.PolicyChanged(), now=datetime(2026, 3, 3))  # noqa: DTZ001


def test_hard_decline_while_paused_still_ends() -> None:
    t = run(S.RETRYING, ev.AttemptDeclined(hard(NOW)), policy=replace(POLICY, enabled=False))
    assert t.new_state is S.NOT_RETRYABLE


def test_a_success_reads_neither_the_policy_nor_the_ledger() -> None:
    """Recording an approved charge loads neither (`settled_context`): money moved, so the
    transition is the same whatever they say."""
    bare = PaymentLedger(network=None, first_failed_at=FAILED_AT)
    strict = replace(POLICY, enabled=False, max_attempts=0, window_days=1)
    for state in S:
        with_all = run(state, ev.AttemptSucceeded())
        without = run(state, ev.AttemptSucceeded(), policy=strict, ledger=bare)
        assert without == with_all, state
