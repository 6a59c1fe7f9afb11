"""The retry state machine: a pure function from (state, event) to a new state and actions."""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import assert_never

from app.enums import Actor, AttemptOutcome, PaymentState, RetryStrategy
from app.retry.events import (
    Action,
    AlertDuplicateCharge,
    ApplyEndAction,
    AttemptAbandoned,
    AttemptDeclined,
    AttemptStarted,
    AttemptSucceeded,
    CancelSubscriptionRetries,
    ClearSchedule,
    CredentialUpdated,
    CustomerDeleted,
    DecisionMade,
    EmitEvent,
    EnqueueAttempt,
    Event,
    ExternalAttemptDeclined,
    FailureIngested,
    IllegalTransitionError,
    InvoiceVoided,
    MerchantPaused,
    MerchantResumed,
    PaidElsewhere,
    PolicyChanged,
    RecordAttempt,
    RecordTransition,
    RecoveryCanceled,
    RequestDecision,
    ScheduleRetry,
    SubscriptionCanceled,
    Transition,
    WindowExpired,
)
from app.retry.rules import (
    DEFAULT_RULES,
    RULE_RETRY_WINDOW,
    RULE_STOP_PAYMENT,
    AttemptRecord,
    NetworkRules,
    PaymentLedger,
    RetryPolicyView,
    RuleVerdict,
    earliest_allowed,
    evaluator_for,
)
from app.retry.schedule import next_fixed_target

P = PaymentState
RULE_FIXED_SCHEDULE_COMPLETE = "fixed_schedule_complete"
RULE_NO_RETRY_CHOSEN = "no_retry_chosen"

_EVERY = frozenset(PaymentState)
ALLOWED_TRANSITIONS: Mapping[PaymentState, frozenset[PaymentState]] = MappingProxyType(
    {
        # PENDING also means "held": a paused merchant's payments wait there without a time.
        # A charge starts only from SCHEDULED.
        P.PENDING: _EVERY - {P.RETRYING},
        P.SCHEDULED: _EVERY,
        P.RETRYING: _EVERY,
        P.RECOVERED: frozenset({P.RECOVERED}),
        P.CANCELED: frozenset({P.CANCELED}),
        P.EXHAUSTED: frozenset({P.EXHAUSTED, P.RECOVERED}),
        P.NOT_RETRYABLE: frozenset({P.NOT_RETRYABLE, P.RECOVERED, P.PENDING}),
    }
)

# Events that cannot happen in a state unless something upstream is broken; the most
# important is a second claim of a payment already RETRYING, which would charge twice.
ILLEGAL_EVENTS: frozenset[tuple[PaymentState, type[Event]]] = frozenset(
    {
        (P.PENDING, AttemptStarted),
        (P.PENDING, AttemptDeclined),
        (P.PENDING, AttemptAbandoned),
        (P.SCHEDULED, AttemptDeclined),
        (P.SCHEDULED, AttemptAbandoned),
        (P.RETRYING, DecisionMade),
        (P.RETRYING, AttemptStarted),
    }
)


def attempt_idempotency_key(payment_id: str, attempt_number: int) -> str:
    """The processor idempotency key (and job id) of one portal attempt on one payment."""
    return f"retry-{payment_id}-{attempt_number}"


@dataclass(slots=True)
class _Outcome:
    state: PaymentState
    reason: str
    actions: list[Action] = field(default_factory=list)
    record: bool = True
    # The rule that ended the payment, moved its retry time or still forbids one, if any.
    blocking_rule: str | None = None


@dataclass(frozen=True, slots=True)
class _Ctx:
    policy: RetryPolicyView
    ledger: PaymentLedger
    now: datetime
    rules: NetworkRules


def _noop(state: PaymentState, reason: str, rule: str | None = None) -> _Outcome:
    return _Outcome(state, reason, record=False, blocking_rule=rule)


def _absorb(state: PaymentState, event: Event) -> _Outcome:
    return _noop(state, f"{state} is terminal: {event.name} ignored")


def _stop(ctx: _Ctx, ledger: PaymentLedger) -> RuleVerdict | None:
    """A rule that ends recovery now, whatever time would be chosen."""
    verdict = evaluator_for(ledger, ctx.policy, ctx.rules).forever
    if verdict is not None:
        return verdict
    window_end = ctx.policy.window_end(ledger.first_failed_at)
    if ctx.now >= window_end:
        detail = f"the retry window closed at {window_end.isoformat()}"
        return RuleVerdict(False, None, RULE_RETRY_WINDOW, P.EXHAUSTED, detail)
    return None


def _end(ctx: _Ctx, state: PaymentState, rule: str | None, detail: str) -> _Outcome:
    out = _Outcome(state, f"{rule}: {detail}" if rule else detail, blocking_rule=rule)
    if state is P.EXHAUSTED:
        out.actions.append(ApplyEndAction(ctx.policy.end_action))
    if rule == RULE_STOP_PAYMENT:
        out.actions.append(CancelSubscriptionRetries(detail))
    return out


def _end_verdict(ctx: _Ctx, verdict: RuleVerdict) -> _Outcome:
    return _end(ctx, verdict.end_state or P.EXHAUSTED, verdict.blocking_rule, verdict.detail)


def _hold(reason: str) -> _Outcome:
    return _Outcome(P.PENDING, reason)


def _schedule_at(
    ctx: _Ctx,
    ledger: PaymentLedger,
    requested: datetime,
    strategy: RetryStrategy,
    reason: str,
) -> _Outcome:
    placement = earliest_allowed(
        max(requested, ctx.now), ledger=ledger, policy=ctx.policy, rules=ctx.rules
    )
    if placement.at is None:
        if placement.end_state is None:
            return _hold(f"{reason}; held: {placement.detail}")
        return _end(ctx, placement.end_state, placement.blocking_rule, placement.detail)
    rule = placement.blocking_rule if placement.moved else None
    if rule is not None:
        reason = f"{reason}; moved to {placement.at.isoformat()} by {rule}"
    schedule = ScheduleRetry(placement.at, reason, strategy, blocking_rule=rule)
    return _Outcome(P.SCHEDULED, reason, [schedule], blocking_rule=rule)


def _fallback(ctx: _Ctx, ledger: PaymentLedger, why: str) -> _Outcome:
    """A retry time that needs no scheduler: the next fixed-schedule day, rules applied.

    Leaving RETRYING must land on a time, so a payment is never SCHEDULED without one even if
    the scheduler's answer never comes; a policy not on the fixed schedule (the model, the
    decline-aware rules) then asks for its own time.
    """
    target = next_fixed_target(ctx.policy, ledger.first_failed_at, ledger.retries)
    decided = ctx.policy.strategy is not RetryStrategy.FIXED_SCHEDULE
    if target is None:
        if not decided:
            detail = f"{why}; all {len(ctx.policy.fixed_schedule_days)} fixed days used"
            return _end(ctx, P.EXHAUSTED, RULE_FIXED_SCHEDULE_COMPLETE, detail)
        requested, desc = ctx.now, "earliest allowed time"
    else:
        requested, desc = target[1], f"fixed schedule day {target[0]}"
    out = _schedule_at(ctx, ledger, requested, RetryStrategy.FIXED_SCHEDULE, f"{why}; {desc}")
    if decided and out.state is P.SCHEDULED:
        out.actions.append(RequestDecision(why))
    return out


def _is_in_flight(record: AttemptRecord) -> bool:
    return record.actor is Actor.PORTAL and record.outcome is None


def _resolve_in_flight(ledger: PaymentLedger, record: AttemptRecord | None) -> PaymentLedger:
    """Replace the in-flight portal attempt by its outcome (or drop it), or append the outcome."""
    flying = next((r for r in ledger.retries if _is_in_flight(r)), None)

    def swap(records: tuple[AttemptRecord, ...]) -> tuple[AttemptRecord, ...]:
        for i, r in enumerate(records):
            if flying is not None and _is_in_flight(r) and r.at == flying.at:
                # The attempt keeps the time it was started: that is when the network saw it.
                kept = () if record is None else (replace(record, at=r.at),)
                return (*records[:i], *kept, *records[i + 1 :])
        return records if record is None else (*records, record)

    decline = record.decline if record is not None and record.decline else ledger.last_decline
    return replace(
        ledger,
        retries=swap(ledger.retries),
        card_history=swap(ledger.card_history),
        customer_history=swap(ledger.customer_history),
        last_decline=decline,
    )


def _with_external(ledger: PaymentLedger, record: AttemptRecord) -> PaymentLedger:
    return replace(
        ledger,
        retries=(*ledger.retries, record),
        card_history=(*ledger.card_history, record),
        customer_history=(*ledger.customer_history, record),
        last_decline=record.decline or ledger.last_decline,
    )


def _on_failure(state: PaymentState, event: FailureIngested, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING:
            ledger = ctx.ledger
            if ledger.last_decline != event.decline:
                ledger = replace(ledger, last_decline=event.decline)
            stop = _stop(ctx, ledger)
            if stop is not None:
                return _end_verdict(ctx, stop)
            if not ctx.policy.enabled:
                return _Outcome(P.PENDING, "failure ingested; recovery is switched off")
            return _Outcome(P.PENDING, "failure ingested", [RequestDecision("first failure")])
        case P.SCHEDULED | P.RETRYING:
            return _noop(state, "failure already ingested")
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_decision(state: PaymentState, event: DecisionMade, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING | P.SCHEDULED:
            if not ctx.policy.enabled:
                if state is P.PENDING:
                    return _noop(state, "recovery is switched off: decision dropped")
                return _hold("recovery is switched off")
            if event.chosen_at is None:
                return _end(ctx, P.EXHAUSTED, RULE_NO_RETRY_CHOSEN, event.reason)
            return _schedule_at(ctx, ctx.ledger, event.chosen_at, event.strategy, event.reason)
        case P.RETRYING:
            raise IllegalTransitionError(state, event)
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_started(state: PaymentState, event: AttemptStarted, ctx: _Ctx) -> _Outcome:
    match state:
        case P.SCHEDULED:
            if not ctx.policy.enabled:
                return _hold("recovery is switched off")
            # The rules are checked again at charge time: attempts by others may have been
            # ingested since the time was chosen.
            placement = earliest_allowed(
                ctx.now, ledger=ctx.ledger, policy=ctx.policy, rules=ctx.rules
            )
            if placement.at == ctx.now:
                number = ctx.ledger.portal_attempts + 1
                actions: list[Action] = [RecordAttempt(number, ctx.now), EnqueueAttempt(number)]
                # Named as the API numbers attempts: the payment's count (the failed charge is 1,
                # every retry since by anyone counts), not the portal's own.
                shown = len(ctx.ledger.retries) + 2
                return _Outcome(P.RETRYING, f"attempt {shown} started", actions)
            reason = "not allowed at claim time"
            return _schedule_at(ctx, ctx.ledger, ctx.now, ctx.policy.strategy, reason)
        case P.PENDING | P.RETRYING:
            raise IllegalTransitionError(state, event)
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_succeeded(state: PaymentState, event: AttemptSucceeded, ctx: _Ctx) -> _Outcome:
    match state:
        case P.RETRYING:
            return _Outcome(P.RECOVERED, "charge succeeded")
        case P.PENDING | P.SCHEDULED | P.EXHAUSTED | P.NOT_RETRYABLE:
            # Money moved: never drop it, whatever we believed about the attempt.
            return _Outcome(P.RECOVERED, f"charge confirmed late while {state}")
        case P.RECOVERED | P.CANCELED:
            reason = f"a portal charge succeeded on a {state} payment"
            return _Outcome(state, reason, [AlertDuplicateCharge(reason)])
        case _:
            assert_never(state)


def _on_declined(state: PaymentState, event: AttemptDeclined, ctx: _Ctx) -> _Outcome:
    match state:
        case P.RETRYING:
            outcome = AttemptRecord(
                event.decline.declined_at, Actor.PORTAL, AttemptOutcome.DECLINED, event.decline
            )
            ledger = _resolve_in_flight(ctx.ledger, outcome)
            stop = _stop(ctx, ledger)
            if stop is not None:
                return _end_verdict(ctx, stop)
            if not ctx.policy.enabled:
                return _hold(f"declined ({event.decline.category}); recovery is switched off")
            return _fallback(ctx, ledger, f"declined ({event.decline.category})")
        case P.PENDING | P.SCHEDULED:
            raise IllegalTransitionError(state, event)
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_abandoned(state: PaymentState, event: AttemptAbandoned, ctx: _Ctx) -> _Outcome:
    match state:
        case P.RETRYING:
            # The processor never saw it: it is no attempt for the network, and its number
            # (hence its idempotency key) is used again by the next one.
            ledger = _resolve_in_flight(ctx.ledger, None)
            stop = _stop(ctx, ledger)
            if stop is not None:
                return _end_verdict(ctx, stop)
            if not ctx.policy.enabled:
                return _hold(f"attempt abandoned ({event.reason}); recovery is switched off")
            reason = f"attempt abandoned ({event.reason}); retry when allowed"
            return _schedule_at(ctx, ledger, ctx.now, ctx.policy.strategy, reason)
        case P.PENDING | P.SCHEDULED:
            raise IllegalTransitionError(state, event)
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_external(state: PaymentState, event: ExternalAttemptDeclined, ctx: _Ctx) -> _Outcome:
    record = AttemptRecord(
        event.decline.declined_at, event.actor, AttemptOutcome.DECLINED, event.decline
    )
    ledger = _with_external(ctx.ledger, record)
    reason = f"{event.actor} retried and was declined ({event.decline.category})"
    match state:
        case P.PENDING | P.SCHEDULED:
            stop = _stop(ctx, ledger)
            if stop is not None:
                return _end_verdict(ctx, stop)
            if state is P.PENDING:
                return _Outcome(state, reason)
            return _Outcome(state, reason, [RequestDecision(reason)])
        case P.RETRYING:
            # Our own charge is in flight; its outcome decides what comes next.
            return _Outcome(state, reason)
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_paid(state: PaymentState, event: PaidElsewhere, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING | P.SCHEDULED | P.RETRYING | P.EXHAUSTED | P.NOT_RETRYABLE:
            return _Outcome(P.RECOVERED, f"paid by {event.actor}")
        case P.RECOVERED | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_ended(
    state: PaymentState,
    event: SubscriptionCanceled | InvoiceVoided | CustomerDeleted | RecoveryCanceled,
    ctx: _Ctx,
) -> _Outcome:
    match state:
        case P.PENDING | P.SCHEDULED | P.RETRYING:
            reason = event.name.replace("_", " ")
            return _Outcome(P.CANCELED, f"{reason}: {event.detail}" if event.detail else reason)
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_credential(state: PaymentState, event: CredentialUpdated, ctx: _Ctx) -> _Outcome:
    ledger = replace(ctx.ledger, credential_since=event.at)
    reason = f"card details updated by {event.actor}"
    match state:
        case P.PENDING | P.SCHEDULED | P.NOT_RETRYABLE:
            stop = _stop(ctx, ledger)
            if stop is not None:
                if state is P.NOT_RETRYABLE:
                    still = f"{reason}; still blocked by {stop.blocking_rule}"
                    return _noop(state, still, stop.blocking_rule)
                return _end_verdict(ctx, stop)
            next_state = P.SCHEDULED if state is P.SCHEDULED else P.PENDING
            if not ctx.policy.enabled:
                return _Outcome(next_state, reason)
            return _Outcome(next_state, reason, [RequestDecision(reason)])
        case P.RETRYING:
            return _Outcome(state, reason)
        case P.RECOVERED | P.EXHAUSTED | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_policy(state: PaymentState, event: PolicyChanged, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING | P.SCHEDULED:
            if not ctx.policy.enabled:
                if state is P.PENDING:
                    return _noop(state, "recovery is switched off")
                return _hold("policy changed: recovery is switched off")
            stop = _stop(ctx, ctx.ledger)
            if stop is not None:
                return _end_verdict(ctx, stop)
            return _Outcome(state, "policy changed", [RequestDecision("policy changed")])
        case P.RETRYING:
            return _noop(state, "policy changed: applies after the attempt in flight")
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_window(state: PaymentState, event: WindowExpired, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING | P.SCHEDULED:
            window_end = ctx.policy.window_end(ctx.ledger.first_failed_at)
            if ctx.now < window_end:
                return _noop(state, "the retry window is still open")
            detail = f"the retry window closed at {window_end.isoformat()}"
            return _end(ctx, P.EXHAUSTED, RULE_RETRY_WINDOW, detail)
        case P.RETRYING:
            return _noop(state, "window expired: the attempt in flight decides")
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_paused(state: PaymentState, event: MerchantPaused, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING:
            return _noop(state, "merchant paused: nothing scheduled")
        case P.SCHEDULED:
            return _hold("merchant paused")
        case P.RETRYING:
            return _noop(state, "merchant paused: the attempt in flight completes")
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _on_resumed(state: PaymentState, event: MerchantResumed, ctx: _Ctx) -> _Outcome:
    match state:
        case P.PENDING:
            if not ctx.policy.enabled:
                return _noop(state, "merchant resumed but recovery is switched off")
            return _Outcome(state, "merchant resumed", [RequestDecision("merchant resumed")])
        case P.SCHEDULED | P.RETRYING:
            return _noop(state, "merchant resumed: nothing held")
        case P.RECOVERED | P.EXHAUSTED | P.NOT_RETRYABLE | P.CANCELED:
            return _absorb(state, event)
        case _:
            assert_never(state)


def _dispatch(state: PaymentState, event: Event, ctx: _Ctx) -> _Outcome:
    match event:
        case FailureIngested():
            return _on_failure(state, event, ctx)
        case DecisionMade():
            return _on_decision(state, event, ctx)
        case AttemptStarted():
            return _on_started(state, event, ctx)
        case AttemptSucceeded():
            return _on_succeeded(state, event, ctx)
        case AttemptDeclined():
            return _on_declined(state, event, ctx)
        case AttemptAbandoned():
            return _on_abandoned(state, event, ctx)
        case ExternalAttemptDeclined():
            return _on_external(state, event, ctx)
        case PaidElsewhere():
            return _on_paid(state, event, ctx)
        case SubscriptionCanceled() | InvoiceVoided() | CustomerDeleted() | RecoveryCanceled():
            return _on_ended(state, event, ctx)
        case CredentialUpdated():
            return _on_credential(state, event, ctx)
        case PolicyChanged():
            return _on_policy(state, event, ctx)
        case WindowExpired():
            return _on_window(state, event, ctx)
        case MerchantPaused():
            return _on_paused(state, event, ctx)
        case MerchantResumed():
            return _on_resumed(state, event, ctx)
        case _:
            assert_never(event)


def _actor(event: Event) -> Actor:
    match event:
        case PaidElsewhere() | ExternalAttemptDeclined() | CredentialUpdated():
            return event.actor
        case _:
            return Actor.PORTAL


def transition(
    state: PaymentState,
    event: Event,
    *,
    policy: RetryPolicyView,
    ledger: PaymentLedger,
    now: datetime,
    rules: NetworkRules = DEFAULT_RULES,
) -> Transition:
    """Apply one event to a payment in `state`; raises `IllegalTransitionError` if it cannot be.

    Contract with the jobs layer:
    - `ledger` is the history as stored before the event; the event's own facts (a decline, a
      new credential) are folded in here. An attempt the jobs recorded as in flight (outcome
      None, see `RecordAttempt`) is resolved in place rather than counted twice.
    - `policy` is the effective policy: a paused merchant is passed as `enabled=False`, and a
      control-group payment with `strategy=FIXED_SCHEDULE` (see `schedule.effective_policy`).
    - `now` is the caller's clock; nothing here reads one.
    - Every transition out of SCHEDULED clears the retry time and every transition into it
      sets one, so a payment has a next retry time exactly while it is SCHEDULED.
    - Terminal states absorb every event (a no-op: `Transition.changed` is False) except:
      NOT_RETRYABLE reopens to PENDING on `CredentialUpdated` when no rule still forbids a
      retry; EXHAUSTED and NOT_RETRYABLE become RECOVERED when money arrives (`PaidElsewhere`,
      `AttemptSucceeded`), because the invoice is paid whatever was decided; a portal charge
      that succeeds on a RECOVERED or CANCELED payment leaves it there and raises
      `AlertDuplicateCharge`.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if (state, type(event)) in ILLEGAL_EVENTS:
        raise IllegalTransitionError(state, event)
    out = _dispatch(state, event, _Ctx(policy, ledger, now, rules))
    if out.state not in ALLOWED_TRANSITIONS[state]:
        raise RuntimeError(f"retry engine bug: {state} -> {out.state} on {event.name}")
    if not out.record:
        return Transition(state, state, (), out.reason, out.blocking_rule)
    schedules = any(isinstance(a, ScheduleRetry) for a in out.actions)
    if out.state is P.SCHEDULED and state is not P.SCHEDULED and not schedules:
        raise RuntimeError(f"retry engine bug: entered SCHEDULED without a time on {event.name}")
    actions: list[Action] = []
    if state is P.SCHEDULED and out.state is not P.SCHEDULED:
        actions.append(ClearSchedule())
    actions.extend(out.actions)
    actions.append(RecordTransition(state, out.state, event.name, out.reason, _actor(event), now))
    if out.state is not state:
        actions.append(EmitEvent(f"payment.{out.state.lower()}"))
    elif schedules:
        actions.append(EmitEvent("payment.rescheduled"))
    if any(isinstance(a, AlertDuplicateCharge) for a in actions):
        actions.append(EmitEvent("payment.duplicate_charge"))
    return Transition(state, out.state, tuple(actions), out.reason, out.blocking_rule)
