"""Carrying out the state machine's transitions in a unit of work; deciding; claiming."""

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, exists, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from app.bulk import write_all
from app.db import UnitOfWork
from app.enums import (
    Actor,
    AttemptOutcome,
    ConnectionStatus,
    MerchantStatus,
    PaymentState,
    RetryStrategy,
)
from app.models.customer import CardCredential, Customer
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.models.retry import OutboxEvent, PaymentTransition
from app.models.retry_policy import RetryPolicy
from app.retry.events import (
    AlertDuplicateCharge,
    ApplyEndAction,
    AttemptAbandoned,
    AttemptDeclined,
    AttemptStarted,
    CancelSubscriptionRetries,
    ClearSchedule,
    CredentialUpdated,
    EmitEvent,
    EnqueueAttempt,
    Event,
    ExternalAttemptDeclined,
    FailureIngested,
    MerchantResumed,
    PaidElsewhere,
    RecordAttempt,
    RecordTransition,
    RequestDecision,
    ScheduleRetry,
    SubscriptionCanceled,
    Transition,
)
from app.retry.rules import AttemptRecord, earliest_allowed, local_zone
from app.retry.schedule import (
    BatchScheduler,
    Decision,
    DecisionRequest,
    PaymentView,
    Scheduler,
    candidate_times,
    decline_aware_to,
    fixed_schedule_to,
    next_decline_aware_target,
    next_fixed_target,
)
from app.retry.state_machine import attempt_idempotency_key, transition
from app.services.retry.end_actions import open_end_action
from app.services.retry.ledger import (
    CardKey,
    PaymentContext,
    RowContext,
    RowHead,
    ledger_with_extra,
    load_contexts,
    reread_histories,
    reread_history,
    row_contexts,
    row_head,
    row_head_columns,
)
from app.services.retry.outbox import emit, event_payload, outbox_row
from app.services.retry.rows import PaymentLike, PaymentRow, changed_columns
from app.services.retry.writes import Writes

logger = logging.getLogger(__name__)

ACTIVE_STATES = (PaymentState.PENDING, PaymentState.SCHEDULED, PaymentState.RETRYING)


# Events after which the stored history differs from the ledger the transition was given.
_HISTORY_EVENTS = (AttemptDeclined, AttemptAbandoned, ExternalAttemptDeclined, CredentialUpdated)


@dataclass
class Applied:
    """What carrying out one or more transitions left for the caller to do after commit."""

    transitions: list[Transition] = field(default_factory=list)
    enqueue: list[tuple[uuid.UUID, int]] = field(default_factory=list)


# A payment's decision reason is stored in at most this many characters.
DECISION_REASON_MAX = 1000
REASON_SEPARATOR = "; "

# States that end recovery: the payment keeps the rule that ended it (None if none did).
_ENDED = (PaymentState.EXHAUSTED, PaymentState.NOT_RETRYABLE, PaymentState.CANCELED)


def _set(payment: PaymentLike, name: str, value: Any) -> None:
    """Set a column only when its value changes: setting a model's attribute costs far more
    than reading it, and a decision sets a dozen, most of them to what they hold."""
    if getattr(payment, name) != value:
        setattr(payment, name, value)


def _enter_state(
    payment: PaymentLike, tr: Transition, *, now: datetime, recovered_by: Actor
) -> None:
    previous = payment.state
    _set(payment, "state", tr.new_state)
    _set(payment, "updated_at", now)
    if tr.new_state is not PaymentState.RETRYING:
        _set(payment, "retrying_since", None)
    if tr.new_state is PaymentState.RECOVERED and previous is not PaymentState.RECOVERED:
        payment.recovered_at = now
        payment.recovered_by = recovered_by
    if tr.new_state in _ENDED:
        _set(payment, "blocking_rule", tr.blocking_rule)


def _schedule(ctx: "PaymentContext | RowContext", action: ScheduleRetry, *, now: datetime) -> None:
    payment = ctx.payment
    _set(payment, "next_retry_at", action.at)
    _set(payment, "decision_at", now)
    # The reason ends by saying in which time zone the local times (quiet hours, paydays) were
    # read, and why that one: the customer's, the policy's, or UTC.
    local = local_zone(ctx.ledger.customer_timezone, ctx.policy.timezone).describe()
    room = DECISION_REASON_MAX - len(local) - len(REASON_SEPARATOR)
    _set(payment, "decision_reason", f"{action.reason[:room]}{REASON_SEPARATOR}{local}")
    _set(payment, "decision_strategy", action.strategy)
    _set(payment, "blocking_rule", action.blocking_rule)
    _set(payment, "policy_version", ctx.policy_version)


def _start_attempt(payment: PaymentLike, action: RecordAttempt, *, now: datetime) -> dict[str, Any]:
    """The portal's attempt, stored in flight before anything is sent: the payment's count
    and in-flight time moved on, and the attempt's row."""
    payment.attempt_count += 1
    payment.retrying_since = now
    return {
        "id": uuid.uuid4(),
        "merchant_id": payment.merchant_id,
        "payment_id": payment.id,
        "number": payment.attempt_count,
        "portal_number": action.attempt_number,
        "idempotency_key": attempt_idempotency_key(str(payment.id), action.attempt_number),
        "attempted_at": action.at,
        "outcome": AttemptOutcome.IN_FLIGHT,
        "actor": Actor.PORTAL,
        "created_at": now,
    }


def _record_attempt(
    uow: UnitOfWork,
    ctx: PaymentContext,
    action: RecordAttempt,
    *,
    now: datetime,
    writes: Writes | None,
) -> None:
    """`_start_attempt` for a payment's context.

    With `writes`, the attempt is a row held there (no model object: building one costs more
    than the rest of the claim) and `ctx.attempts` does not gain it; without, it is added to
    the session and to `ctx.attempts`."""
    row = _start_attempt(ctx.payment, action, now=now)
    if writes is not None:
        writes.insert(PaymentAttempt, row)
        return
    attempt = PaymentAttempt(**row)
    uow.session.add(attempt)
    ctx.attempts.append(attempt)


def _timeline_row(
    payment: PaymentLike,
    seq: int,
    action: RecordTransition,
    *,
    actor_label: str | None,
    event_label: str | None,
) -> dict[str, Any]:
    """One row of the payment's timeline, at position `seq`."""
    return {
        "id": uuid.uuid4(),
        "merchant_id": payment.merchant_id,
        "payment_id": payment.id,
        "seq": seq,
        "from_state": action.from_state,
        "to_state": action.to_state,
        "event": (event_label or action.event)[:64],
        "reason": action.reason[:2000],
        "actor": (actor_label or str(action.actor))[:255],
        "at": action.at,
    }


def _record_transition(
    uow: UnitOfWork,
    ctx: PaymentContext,
    action: RecordTransition,
    *,
    actor_label: str | None,
    event_label: str | None,
    writes: Writes | None,
) -> None:
    """One row of the payment's timeline, at the next position."""
    row = _timeline_row(
        ctx.payment, ctx.next_seq, action, actor_label=actor_label, event_label=event_label
    )
    if writes is None:
        uow.session.add(PaymentTransition(**row))
    else:
        writes.insert(PaymentTransition, row)
    ctx.next_seq += 1


def apply_transition(
    uow: UnitOfWork,
    ctx: PaymentContext,
    tr: Transition,
    *,
    now: datetime,
    actor_label: str | None = None,
    event_label: str | None = None,
    recovered_by: Actor = Actor.PORTAL,
    writes: Writes | None = None,
) -> Applied:
    """Store a transition's effects on the payment, its timeline and the outbox (no commit).

    `actor_label` and `event_label` replace the timeline's actor and event name (a person's
    action expressed through one of the core's events). With `writes`, the rows are held
    there for the caller to write in one statement with the rest of its batch.
    """
    applied = Applied(transitions=[tr])
    if not tr.changed:
        return applied
    payment = ctx.payment
    if writes is not None:
        writes.touch(payment)
    previous = payment.state
    _enter_state(payment, tr, now=now, recovered_by=recovered_by)
    for action in tr.actions:
        match action:
            case ScheduleRetry():
                _schedule(ctx, action, now=now)
            case ClearSchedule():
                payment.next_retry_at = None
            case RecordAttempt():
                _record_attempt(uow, ctx, action, now=now, writes=writes)
            case EnqueueAttempt():
                applied.enqueue.append((payment.id, action.attempt_number))
            case RecordTransition():
                _record_transition(
                    uow,
                    ctx,
                    action,
                    actor_label=actor_label,
                    event_label=event_label,
                    writes=writes,
                )
            case EmitEvent():
                payload = event_payload(payment, action.name, previous, tr.reason)
                emit(uow, payment, action.name, payload, now, writes=writes)
            case ApplyEndAction():
                # Carried out at the processor by the end-action job; announced once done.
                open_end_action(uow, payment, action.end_action, tr.reason, now=now)
            case AlertDuplicateCharge():
                logger.error(
                    "duplicate charge: a refund is needed",
                    extra={"payment_id": str(payment.id), "reason": action.reason},
                )
            case RequestDecision() | CancelSubscriptionRetries():
                pass  # carried out by `run_event`, which can load other payments
    return applied


async def run_event(
    uow: UnitOfWork,
    ctx: PaymentContext,
    event: Event,
    *,
    now: datetime,
    scheduler: Scheduler | None = None,
    actor_label: str | None = None,
    event_label: str | None = None,
    writes: Writes | None = None,
    prepared: "Prepared | None" = None,
) -> Applied:
    """One event through the state machine, its effects stored, follow-ups carried out.

    With `writes`, rows are held there (`apply_transition`); what is held is written before
    anything here reads the database again. `prepared`: candidates computed ahead for a
    batch (`prepare_decisions`), used for a decision on the very context they were made for.
    """
    tr = transition(ctx.payment.state, event, policy=ctx.policy, ledger=ctx.ledger, now=now)
    applied = apply_transition(
        uow,
        ctx,
        tr,
        now=now,
        actor_label=actor_label,
        event_label=event_label,
        recovered_by=_recovered_by(event),
        writes=writes,
    )
    await _follow_up(
        uow, ctx, event, tr, applied, now=now, scheduler=scheduler, writes=writes, prepared=prepared
    )
    return applied


def _recovered_by(event: Event) -> Actor:
    return event.actor if isinstance(event, PaidElsewhere) else Actor.PORTAL


def _rereads(ctx: PaymentContext, event: Event, tr: Transition) -> bool:
    """Whether the decision a carried-out transition asks for reads the history again."""
    return (
        any(isinstance(a, RequestDecision) for a in tr.actions)
        and ctx.payment.state in (PaymentState.PENDING, PaymentState.SCHEDULED)
        and isinstance(event, _HISTORY_EVENTS)
    )


async def _follow_up(
    uow: UnitOfWork,
    ctx: PaymentContext,
    event: Event,
    tr: Transition,
    applied: Applied,
    *,
    now: datetime,
    scheduler: Scheduler | None,
    writes: Writes | None,
    prepared: "Prepared | None",
    fresh: PaymentContext | None = None,
) -> None:
    """What a carried-out transition asks for beyond its own rows: a decision (on `fresh`,
    the context with its history read again, when the caller read it), a stop-payment's
    other payments."""
    if any(isinstance(a, RequestDecision) for a in tr.actions):
        if ctx.payment.state in (PaymentState.PENDING, PaymentState.SCHEDULED):
            if fresh is None:
                fresh = ctx
                if isinstance(event, _HISTORY_EVENTS):
                    # The event changed the history the rules read: read it back as stored.
                    if writes is not None:
                        await writes.flush(uow.session)
                    await uow.session.flush()
                    reread = await reread_history(uow.session, ctx, now=now)
                    if reread is None:
                        loaded = await load_contexts(uow.session, [ctx.payment.id], now=now)
                        reread = loaded[ctx.payment.id]
                    fresh = reread
            candidates = None if prepared is None else prepared.candidates(fresh, now)
            decision = decide(fresh, now=now, scheduler=scheduler, candidates=candidates)
            more = await run_event(
                uow, fresh, decision.to_event(), now=now, scheduler=scheduler, writes=writes
            )
            applied.transitions += more.transitions
            applied.enqueue += more.enqueue
        _set(ctx.payment, "needs_decision", False)
    for action in tr.actions:
        if isinstance(action, CancelSubscriptionRetries):
            if writes is not None:
                await writes.flush(uow.session)
            await cancel_subscription(uow, ctx.payment, action.reason, now=now)


async def run_events(
    uow: UnitOfWork,
    runs: Sequence[tuple[PaymentContext, Event, Scheduler | None]],
    *,
    now: datetime,
    writes: Writes,
) -> list[Applied]:
    """`run_event` for events of distinct payments, their rows held in `writes`: every
    transition first; then, after one write, the histories the events changed read again in
    one statement (`reread_histories`); then the decisions the transitions ask for. One by
    one, each decision would write what is held and read its history on its own.

    A decision reads the history as stored once every event of the batch is: as `run_event`
    one after the other would (the decisions themselves add no attempt). A stop-payment
    order (which loads the subscription's other payments) runs them one by one instead."""
    trs = [
        transition(ctx.payment.state, event, policy=ctx.policy, ledger=ctx.ledger, now=now)
        for ctx, event, _ in runs
    ]
    if any(isinstance(a, CancelSubscriptionRetries) for tr in trs for a in tr.actions):
        return [
            await run_event(uow, ctx, event, now=now, scheduler=scheduler, writes=writes)
            for ctx, event, scheduler in runs
        ]
    applied = [
        apply_transition(uow, ctx, tr, now=now, recovered_by=_recovered_by(event), writes=writes)
        for (ctx, event, _), tr in zip(runs, trs, strict=True)
    ]
    stale = [i for i, (run, tr) in enumerate(zip(runs, trs, strict=True)) if _rereads(*run[:2], tr)]
    fresh: dict[int, PaymentContext] = {}
    if stale:
        # The histories read only attempts: those are written now; the payments, timeline
        # and outbox rows stay held, to be written (and their triggers fired) once, after
        # the decisions. The session does not flush on its own: payments already loaded read
        # as the session holds them.
        await writes.flush(uow.session, only=(PaymentAttempt,))
        reread = await reread_histories(uow.session, [runs[i][0] for i in stale], now=now)
        missing = [runs[i][0].payment.id for i, r in zip(stale, reread, strict=True) if r is None]
        loaded = await load_contexts(uow.session, missing, now=now)
        for i, r in zip(stale, reread, strict=True):
            fresh[i] = r if r is not None else loaded[runs[i][0].payment.id]
    for i, ((ctx, event, scheduler), tr) in enumerate(zip(runs, trs, strict=True)):
        await _follow_up(
            uow,
            ctx,
            event,
            tr,
            applied[i],
            now=now,
            scheduler=scheduler,
            writes=writes,
            prepared=None,
            fresh=fresh.get(i),
        )
    return applied


async def cancel_subscription(
    uow: UnitOfWork, payment: Payment, reason: str, *, now: datetime
) -> None:
    """A stop-payment order revokes the mandate: every open payment of it stops too."""
    if not payment.subscription_ref:
        return
    ids = list(
        (
            await uow.session.execute(
                select(col(Payment.id)).where(
                    col(Payment.merchant_id) == payment.merchant_id,
                    col(Payment.subscription_ref) == payment.subscription_ref,
                    col(Payment.id) != payment.id,
                    col(Payment.state).in_((PaymentState.PENDING, PaymentState.SCHEDULED)),
                )
            )
        ).scalars()
    )
    # A payment whose charge is in flight is left to its outcome: its decline (or success)
    # decides, and the stop-payment still binds its next decision.
    contexts = await load_contexts(uow.session, ids, now=now, lock=True)
    for other in contexts.values():
        await run_event(
            uow,
            other,
            SubscriptionCanceled(),
            now=now,
            event_label="stop_payment_order",
        )


_Plan = Callable[[Sequence[datetime]], Decision]


def _rules(
    ctx: "PaymentContext | RowContext", view: PaymentView, now: datetime
) -> tuple[_Plan, str, RetryStrategy, tuple[str, datetime] | None]:
    """The rule-based scheduler a payment's policy uses (as `fixed_schedule` or
    `decline_aware` would decide among the candidates it is given, its target found once),
    its label and strategy, and its next target (why, when): the fixed schedule's day, or the
    decline-aware rules' next time."""
    policy, ledger = ctx.policy, ctx.ledger
    if policy.strategy is RetryStrategy.FIXED_SCHEDULE:
        fixed = next_fixed_target(policy, ledger.first_failed_at, ledger.retries)
        target = None if fixed is None else (f"day {fixed[0]} after the first failure", fixed[1])

        def plan_fixed(candidates: Sequence[datetime]) -> Decision:
            return fixed_schedule_to(fixed, candidates, policy=policy, now=now)

        return plan_fixed, "fixed schedule", RetryStrategy.FIXED_SCHEDULE, target
    target = next_decline_aware_target(policy, view, ledger.retries)

    def plan_aware(candidates: Sequence[datetime]) -> Decision:
        return decline_aware_to(target, candidates, now=now)

    return plan_aware, "decline-aware rules", RetryStrategy.DECLINE_AWARE, target


def decide(
    ctx: "PaymentContext | RowContext",
    *,
    now: datetime,
    scheduler: Scheduler | None = None,
    candidates: Sequence[datetime] | None = None,
) -> Decision:
    """When to retry: the model's choice among allowed times, the fixed schedule, or the
    decline-aware rules (also what a model policy gets while no model is loaded).

    The rules need no candidate grid: their target is moved to the first allowed time
    directly, and when no time is allowed the state machine names the rule that ends it.
    `candidates`: the allowed times already computed for this context at `now`
    (`candidate_times`), for a caller that scored them ahead.
    """
    policy, ledger = ctx.policy, ctx.ledger
    view = ctx.view()
    if policy.strategy is RetryStrategy.MODEL and scheduler is not None:
        if candidates is None:
            candidates = candidate_times(ledger=ledger, policy=policy, now=now)
        return scheduler(view, ledger.retries, candidates, policy=policy, now=now)
    plan, label, strategy, target = _rules(ctx, view, now)
    if target is None:
        decision = plan(())
    else:
        why, at = target
        placement = earliest_allowed(max(at, now), ledger=ledger, policy=policy)
        if placement.at is None:
            decision = Decision(at, f"{label}: {why}", strategy)
        else:
            decision = plan((placement.at,))
    if policy.strategy is RetryStrategy.MODEL:
        reason = f"{decision.reason} (no champion model: decline-aware rules)"
        decision = replace(decision, reason=reason)
    return decision


@dataclass(frozen=True)
class Prepared:
    """Allowed candidate times computed ahead for a batch of contexts at one time, by payment.
    Used only for the very context (the same ledger and policy objects) and time they were
    computed for: anything else is computed again."""

    now: datetime
    by_payment: dict[uuid.UUID, tuple[PaymentContext, tuple[datetime, ...]]]

    def candidates(self, ctx: PaymentContext, now: datetime) -> tuple[datetime, ...] | None:
        found = self.by_payment.get(ctx.payment.id)
        if found is None or now != self.now:
            return None
        made_for, candidates = found
        if made_for.ledger is not ctx.ledger or made_for.policy is not ctx.policy:
            return None
        return candidates


def prepare_decisions(
    contexts: Sequence[PaymentContext], *, now: datetime, scheduler: Scheduler | None
) -> Prepared | None:
    """For a batch scheduler (the model's), the allowed times of every context under the model
    strategy, and the model's choices among them scored in one batch ahead of the decisions
    (`BatchScheduler.prepare`). Each decision is then made as it would be alone."""
    if not isinstance(scheduler, BatchScheduler):
        return None
    by_payment: dict[uuid.UUID, tuple[PaymentContext, tuple[datetime, ...]]] = {}
    requests: list[DecisionRequest] = []
    for ctx in contexts:
        policy, ledger = ctx.policy, ctx.ledger
        if policy.strategy is not RetryStrategy.MODEL:
            continue
        candidates = candidate_times(ledger=ledger, policy=policy, now=now)
        by_payment[ctx.payment.id] = (ctx, candidates)
        requests.append((ctx.view(), ledger.retries, candidates, policy, now))
    if not requests:
        return None
    scheduler.prepare(requests)
    return Prepared(now, by_payment)


@cache
def _pending_statement() -> Any:
    """PENDING payments that wait for a decision, new failures first, locked (`SKIP LOCKED`)
    and read as rows (`row_head_columns`, past successes included)."""
    return (
        sa_select(*row_head_columns(True))
        .select_from(Payment)
        .join(Customer, col(Customer.id) == col(Payment.customer_id))
        .join(Merchant, col(Merchant.id) == col(Payment.merchant_id))
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .where(col(Payment.state) == PaymentState.PENDING, col(Payment.needs_decision))
        .order_by(col(Payment.first_failed_at))
        .limit(bindparam("limit"))
        .with_for_update(of=Payment, skip_locked=True)
    )


def _decided_by_row(ctx: RowContext, *, now: datetime) -> list[Transition] | None:
    """The transitions a pending payment's decision makes, computed on its row: the ingested
    failure first for a payment with no timeline yet, then the decision it asks for (as
    `run_event` and `_follow_up` make them). None when one of them asks for more than
    `_apply_row` does."""
    payment = ctx.payment
    if ctx.next_seq == 0:
        # Ingestion opens payments without the state machine; their timeline starts here.
        event: Event = FailureIngested(ctx.first_decline)
    else:
        event = decide(ctx, now=now).to_event()
    tr = transition(payment.state, event, policy=ctx.policy, ledger=ctx.ledger, now=now)
    if not _by_row(tr, also=(RequestDecision,)):
        return None
    found = [tr]
    asks = any(isinstance(a, RequestDecision) for a in tr.actions)
    if asks and tr.new_state in (PaymentState.PENDING, PaymentState.SCHEDULED):
        decision = decide(ctx, now=now).to_event()
        more = transition(tr.new_state, decision, policy=ctx.policy, ledger=ctx.ledger, now=now)
        if not _by_row(more):
            return None
        found.append(more)
    return found


async def decide_pending(
    uow: UnitOfWork,
    *,
    now: datetime,
    limit: int = 500,
    scheduler: Scheduler | None = None,
) -> int:
    """Decide PENDING payments that wait for a decision (new failures first); no commit.

    Decisions by the rules are made on the payments read as rows and written in one
    statement; decisions by the model (scored as one batch) and transitions that ask for
    more than `_apply_row` does are then carried out on the payments' model objects."""
    rows = (await uow.session.execute(_pending_statement(), {"limit": limit})).all()
    if not rows:
        return await _resume_held(uow, now=now, limit=limit, scheduler=scheduler)
    heads = [row_head(row) for row in rows]
    contexts = await row_contexts(uow.session, heads, now=now)
    held = _RowWrites()
    applied = Applied()
    by_model: list[uuid.UUID] = []
    for head in heads:
        ctx = contexts[head.payment.id]
        if scheduler is not None and ctx.policy.strategy is RetryStrategy.MODEL:
            by_model.append(head.payment.id)
            continue
        transitions = _decided_by_row(ctx, now=now)
        if transitions is None:
            by_model.append(head.payment.id)
            continue
        for tr in transitions:
            _apply_row(ctx, tr, now=now, held=held, applied=applied)
        ctx.payment.needs_decision = False
        held.payments.append((ctx.payment, head.read))
    await held.flush(uow)
    await _decide_models(uow, by_model, now=now, scheduler=scheduler)
    # Flushed so that a later query in the same unit of work sees these payments as decided.
    await uow.session.flush()
    return len(heads) + await _resume_held(uow, now=now, limit=limit, scheduler=scheduler)


async def _decide_models(
    uow: UnitOfWork,
    ids: Sequence[uuid.UUID],
    *,
    now: datetime,
    scheduler: Scheduler | None,
) -> None:
    """`decide_pending` on the payments' model objects (locked by the caller)."""
    if not ids:
        return
    contexts = await load_contexts(uow.session, ids, now=now, attempts=False)
    # The model's choices for the whole batch in one scoring call (each as it would be alone).
    prepared = prepare_decisions(list(contexts.values()), now=now, scheduler=scheduler)
    writes = Writes()
    for pid in ids:
        ctx = contexts.get(pid)
        if ctx is None:
            continue
        if ctx.next_seq == 0:
            # Ingestion opens payments without the state machine; their timeline starts here.
            event: Event = FailureIngested(ctx.first_decline)
        else:
            candidates = None if prepared is None else prepared.candidates(ctx, now)
            event = decide(ctx, now=now, scheduler=scheduler, candidates=candidates).to_event()
        await run_event(
            uow, ctx, event, now=now, scheduler=scheduler, writes=writes, prepared=prepared
        )
        _set(ctx.payment, "needs_decision", False)
        writes.touch(ctx.payment)
    await writes.flush(uow.session)


@cache
def _held_statement() -> Any:
    """PENDING payments not waiting for a decision whose merchant is active with recovery on
    (built once: building it costs more than running it when nothing is held)."""
    current = aliased(RetryPolicy)
    newer = aliased(RetryPolicy)
    enabled = exists().where(
        col(current.merchant_id) == col(Payment.merchant_id),
        col(current.enabled),
        ~exists().where(
            col(newer.merchant_id) == col(current.merchant_id),
            col(newer.version) > col(current.version),
        ),
    )
    return (
        select(col(Payment.id))
        .join(Merchant, col(Merchant.id) == col(Payment.merchant_id))
        .where(
            col(Payment.state) == PaymentState.PENDING,
            ~col(Payment.needs_decision),
            col(Merchant.status) == MerchantStatus.ACTIVE,
            enabled,
        )
        .order_by(col(Payment.first_failed_at))
        .limit(bindparam("limit"))
        .with_for_update(of=Payment, skip_locked=True)
    )


async def _resume_held(
    uow: UnitOfWork, *, now: datetime, limit: int, scheduler: Scheduler | None
) -> int:
    """PENDING payments held while their merchant was paused or recovery was off, now that it
    runs again: the core's MerchantResumed asks for a decision."""
    ids = list((await uow.session.execute(_held_statement(), {"limit": limit})).scalars())
    contexts = await load_contexts(uow.session, ids, now=now, attempts=False)
    writes = Writes()
    for ctx in contexts.values():
        await run_event(uow, ctx, MerchantResumed(), now=now, scheduler=scheduler, writes=writes)
    await writes.flush(uow.session)
    await uow.session.flush()
    return len(contexts)


def lock_key(kind: str, *parts: object) -> int:
    """A signed 64-bit advisory-lock key for one card or one customer."""
    digest = hashlib.sha256("\x1f".join([kind, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _try_locks(uow: UnitOfWork, keys: Sequence[int]) -> set[int]:
    if not keys:
        return set()
    statement = select(func.unnest(bindparam("keys", type_=ARRAY(BIGINT))).label("k")).subquery()
    query = select(statement.c.k, func.pg_try_advisory_xact_lock(statement.c.k))
    rows = (await uow.session.execute(query, {"keys": list(keys)})).all()
    return {k for k, ok in rows if ok}


@cache
def _due_statement() -> Any:
    """Due SCHEDULED payments of active connections as rows (`row_head_columns`), locked
    (`SKIP LOCKED`), each with the fingerprints of the cards its attempts were made on.

    The due payments are picked first, on their own (`picked`: the due index in time order,
    stopping at the limit), and only those are joined to their customer, merchant and card.
    In one statement with the joins, the planner chose by its estimate of SCHEDULED rows: a
    billing-day burst makes that estimate stale (one row where there are 95,000), and it read
    every scheduled payment by another index and sorted them, 1.1 s a batch. The joined read
    locks the picked rows again (already this transaction's, so it never waits) for their
    newest version: one a concurrent transaction changed between this statement's snapshot and
    the pick is read as it now is, as the pick's own lock sees it."""
    active_connection = exists().where(
        col(ProcessorConnection.id) == col(Payment.connection_id),
        col(ProcessorConnection.status) == ConnectionStatus.ACTIVE,
    )
    picked = (
        sa_select(col(Payment.id))
        .where(
            col(Payment.state) == PaymentState.SCHEDULED,
            col(Payment.next_retry_at) <= bindparam("now"),
            active_connection,
        )
        .order_by(col(Payment.next_retry_at))
        .limit(bindparam("limit"))
        .with_for_update(of=Payment, skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    # The cards the payment's attempts were made on: its ledger counts them too.
    used = aliased(CardCredential)
    attempt_cards = (
        sa_select(func.array_agg(col(used.fingerprint).distinct()))
        .join(PaymentAttempt, col(PaymentAttempt.card_id) == col(used.id))
        .where(col(PaymentAttempt.payment_id) == col(Payment.id))
        .correlate(Payment)
        .scalar_subquery()
    )
    return (
        sa_select(*row_head_columns(False), attempt_cards)
        .select_from(Payment)
        .join(Customer, col(Customer.id) == col(Payment.customer_id))
        .join(Merchant, col(Merchant.id) == col(Payment.merchant_id))
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .where(col(Payment.id).in_(sa_select(picked.c.id)))
        .order_by(col(Payment.next_retry_at))
        .with_for_update(of=Payment)
    )


async def _due(uow: UnitOfWork, *, now: datetime, limit: int) -> list[tuple[RowHead, list[int]]]:
    """Due SCHEDULED payments of active connections, locked (`SKIP LOCKED`) and read as rows,
    each with the advisory-lock keys of its customer and of every card its ledger counts."""
    rows = (await uow.session.execute(_due_statement(), {"now": now, "limit": limit})).all()
    due: list[tuple[RowHead, list[int]]] = []
    for row in rows:
        head, used = row_head(row[:-1]), row[-1]
        payment = head.payment
        keys = [lock_key("customer", payment.merchant_id, payment.customer_id)]
        # Every card its ledger counts (PaymentContext.card_keys): a retry may hit any.
        fingerprint = head.card[0][1] if head.card is not None else None
        cards = {fingerprint, payment.credential_fingerprint, *(used or ())}
        keys += [lock_key("card", payment.merchant_id, fp) for fp in sorted(c for c in cards if c)]
        due.append((head, keys))
    return due


# What carrying out a transition on a payment read as a row may do (`_apply_row`); a
# transition that asks for anything else (an end action, a stop-payment's other payments, an
# alert) is carried out on the payment's model object.
_ROW_ACTIONS = (
    ScheduleRetry,
    ClearSchedule,
    RecordAttempt,
    EnqueueAttempt,
    RecordTransition,
    EmitEvent,
)


@dataclass
class _RowWrites:
    """What transitions carried out on payment rows write, in one statement (`flush`): each
    payment (with its values as read) once, its new attempts, timeline rows and events."""

    payments: list[tuple[PaymentRow, tuple[Any, ...]]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)

    async def flush(self, uow: UnitOfWork) -> None:
        """Write the payments' changed columns and the new rows; then nothing is held."""
        columns = changed_columns(self.payments)
        updates = [{"id": p.id, **{c: getattr(p, c) for c in columns}} for p, _ in self.payments]
        await write_all(
            uow.session,
            [
                (PaymentAttempt, self.attempts),
                (PaymentTransition, self.timeline),
                (OutboxEvent, self.outbox),
            ],
            [(Payment, updates)] if columns else [],
        )
        self.payments, self.attempts, self.timeline, self.outbox = [], [], [], []


def _by_row(tr: Transition, *, also: tuple[type, ...] = ()) -> bool:
    """Whether `_apply_row` carries the transition out (`also`: actions the caller does)."""
    return all(isinstance(a, (*_ROW_ACTIONS, *also)) for a in tr.actions)


def _apply_row(
    ctx: RowContext, tr: Transition, *, now: datetime, held: _RowWrites, applied: Applied
) -> None:
    """`apply_transition` for a payment read as a row, for a transition `_by_row` accepts:
    the same changes on the row and the same new rows, held in `held`. The caller adds the
    payment to `held.payments` once."""
    applied.transitions.append(tr)
    if not tr.changed:
        return
    payment = ctx.payment
    previous = payment.state
    _enter_state(payment, tr, now=now, recovered_by=Actor.PORTAL)
    for action in tr.actions:
        match action:
            case ScheduleRetry():
                _schedule(ctx, action, now=now)
            case ClearSchedule():
                payment.next_retry_at = None
            case RecordAttempt():
                held.attempts.append(_start_attempt(payment, action, now=now))
            case EnqueueAttempt():
                applied.enqueue.append((payment.id, action.attempt_number))
            case RecordTransition():
                held.timeline.append(
                    _timeline_row(payment, ctx.next_seq, action, actor_label=None, event_label=None)
                )
                ctx.next_seq += 1
            case EmitEvent():
                payload = event_payload(payment, action.name, previous, tr.reason)
                held.outbox.append(outbox_row(payment, action.name, payload, now))
            case RequestDecision():
                pass  # carried out by the caller
            case _:
                raise RuntimeError(f"{type(action).__name__} is not carried out on a row")


async def _start_attempts(uow: UnitOfWork, heads: Sequence[RowHead], *, now: datetime) -> Applied:
    """AttemptStarted for each payment, in order; each ledger also counts the attempts
    started before it in the batch, which the loaded ledgers do not hold yet.

    The payments are read as rows, their transitions carried out on them and written in one
    statement. A transition that asks for more (`_by_row`) is carried out afterwards on the
    payment's model object, through `run_event`: a stop-payment order there reads the other
    payments of its subscription as written. Its ledger then holds every attempt the batch
    started (a superset of those before it: caps count more, never fewer)."""
    contexts = await row_contexts(uow.session, heads, now=now)
    extra_card: dict[CardKey, list[AttemptRecord]] = defaultdict(list)
    extra_customer: dict[uuid.UUID, list[AttemptRecord]] = defaultdict(list)
    applied = Applied()
    held = _RowWrites()
    by_model: list[uuid.UUID] = []
    for head in heads:
        ctx = contexts[head.payment.id]
        payment = ctx.payment
        if payment.state is not PaymentState.SCHEDULED:
            continue
        ledger = ledger_with_extra(
            ctx.ledger,
            [r for key in ctx.card_keys for r in extra_card.get(key, ())],
            extra_customer.get(payment.customer_id, []),
        )
        tr = transition(payment.state, AttemptStarted(), policy=ctx.policy, ledger=ledger, now=now)
        if not _by_row(tr):
            by_model.append(payment.id)
            continue
        ctx.ledger = ledger
        _apply_row(ctx, tr, now=now, held=held, applied=applied)
        held.payments.append((payment, head.read))
        if tr.new_state is PaymentState.RETRYING:
            record = AttemptRecord(now, Actor.PORTAL, None)
            for key in ctx.card_keys:
                extra_card[key].append(record)
            extra_customer[payment.customer_id].append(record)
    await held.flush(uow)
    if by_model:
        models = await load_contexts(uow.session, by_model, now=now, attempts=False)
        writes = Writes()
        for pid in by_model:
            model = models.get(pid)
            if model is None or model.payment.state is not PaymentState.SCHEDULED:
                continue
            result = await run_event(uow, model, AttemptStarted(), now=now, writes=writes)
            applied.transitions += result.transitions
            applied.enqueue += result.enqueue
        await writes.flush(uow.session)
    return applied


async def claim_due(
    uow: UnitOfWork,
    *,
    now: datetime,
    limit: int = 200,
) -> Applied:
    """Move due SCHEDULED payments to RETRYING with an in-flight attempt each; no commit.

    Rows are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent claimers split the due set.
    Each card a payment's ledger counts and each customer is also held by a transaction-level
    advisory lock, taken before the ledgers are read: two claimers never both count a card's
    or a customer's attempts without seeing each other's. A payment whose lock is held
    elsewhere waits for the next run.
    """
    due = await _due(uow, now=now, limit=limit)
    if not due:
        return Applied()
    held = await _try_locks(uow, sorted({k for _, ks in due for k in ks}))
    claimable = [head for head, ks in due if all(k in held for k in ks)]
    applied = await _start_attempts(uow, claimable, now=now)
    await uow.session.flush()
    return applied
