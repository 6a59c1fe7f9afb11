"""What a person may do to one payment's recovery: cancel it, or ask for a retry now."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from app.db import UnitOfWork
from app.enums import PaymentState
from app.errors import InvalidState, NotFound, RecoveryDisabled
from app.models.payment import Payment
from app.retry.events import DecisionMade, Event, RecoveryCanceled
from app.services import audit
from app.services.retry.engine import run_event
from app.services.retry.ledger import PaymentContext, load_contexts
from app.tenancy import Principal


@dataclass(frozen=True)
class ManualResult:
    """The payment after the action, and the state machine's explanation."""

    payment: Payment
    reason: str


def _snapshot(payment: Payment) -> dict[str, str | None]:
    return {
        "state": str(payment.state),
        "next_retry_at": payment.next_retry_at.isoformat() if payment.next_retry_at else None,
    }


async def _load(
    uow: UnitOfWork, principal: Principal, payment_id: uuid.UUID, now: datetime
) -> PaymentContext:
    contexts = await load_contexts(uow.session, [payment_id], now=now, lock=True)
    ctx = contexts.get(payment_id)
    if ctx is None:
        raise NotFound("payment not found", field="paymentId")
    principal.require_configure(ctx.payment.merchant_id, "the merchant's payments")
    return ctx


async def _apply(
    uow: UnitOfWork,
    ctx: PaymentContext,
    event: Event,
    *,
    principal: Principal,
    event_label: str,
    action: str,
    reason: str,
    now: datetime,
) -> ManualResult:
    """Run a person's event through the state machine and audit the payment before and after."""
    payment = ctx.payment
    before = _snapshot(payment)
    applied = await run_event(
        uow, ctx, event, now=now, actor_label=principal.actor_label, event_label=event_label
    )
    audit.record(
        uow,
        principal=principal,
        merchant_id=payment.merchant_id,
        action=action,
        entity_type="payment",
        entity_id=str(payment.id),
        before=before,
        after=_snapshot(payment),
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return ManualResult(payment, applied.transitions[-1].reason)


async def cancel_recovery(
    uow: UnitOfWork,
    *,
    principal: Principal,
    payment_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> ManualResult:
    """Stop recovering one payment (CANCELED), audited; refused while a charge is in flight,
    whose outcome must be recorded first."""
    reason = audit.clean_reason(reason)
    ctx = await _load(uow, principal, payment_id, now)
    payment = ctx.payment
    if payment.state is PaymentState.RETRYING:
        raise InvalidState("a charge is in flight; cancel once its outcome is recorded")
    if payment.state.is_terminal:
        raise InvalidState(f"the payment is already {payment.state}")
    return await _apply(
        uow,
        ctx,
        RecoveryCanceled(reason),
        principal=principal,
        event_label="recovery_canceled",
        action="payment.cancel_recovery",
        reason=reason,
        now=now,
    )


async def retry_now(
    uow: UnitOfWork,
    *,
    principal: Principal,
    payment_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> ManualResult:
    """Schedule the next retry for now, audited. The network rules and the merchant's policy
    still apply: the retry lands on the earliest allowed time, or the payment ends with the
    rule that forbids it."""
    reason = audit.clean_reason(reason)
    ctx = await _load(uow, principal, payment_id, now)
    payment = ctx.payment
    if payment.state not in (PaymentState.PENDING, PaymentState.SCHEDULED):
        raise InvalidState(f"a {payment.state} payment cannot be retried")
    if not ctx.policy.enabled:
        raise RecoveryDisabled("recovery is paused or switched off for this merchant")
    event = DecisionMade(
        chosen_at=now,
        reason=f"retry requested by {principal.actor_label}: {reason}"[:500],
        strategy=ctx.policy.strategy,
    )
    return await _apply(
        uow,
        ctx,
        event,
        principal=principal,
        event_label="retry_requested",
        action="payment.retry_now",
        reason=reason,
        now=now,
    )
