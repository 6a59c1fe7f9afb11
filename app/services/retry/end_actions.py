"""End actions: the merchant's choice for an invoice whose recovery ended unpaid.

`LEAVE_INVOICE_OPEN` needs nothing of the processor: it is recorded as done, and announced, in
the transaction that ends the payment. `CANCEL_SUBSCRIPTION` is recorded as pending there and
carried out at the processor by the end-action job (`app/workflows/end_actions.py`); the outbox
event is written in the transaction that records it done, so it never announces an action that
did not happen. A failed try waits (doubling from a minute to six hours) and is tried again
under the same idempotency key, up to `MAX_TRIES`; then the run is FAILED for a person.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from app.db import UnitOfWork
from app.enums import EndAction, EndActionStatus, PaymentState
from app.models.customer import Customer
from app.models.end_action import EndActionRun
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment
from app.processors.base import BillingRefs
from app.services.retry.outbox import emit, event_payload

LEAVE_OPEN_DETAIL = (
    "the invoice is left open at the processor: the merchant's billing system decides what "
    "happens to it"
)
MAX_TRIES = 10
FIRST_BACKOFF = timedelta(minutes=1)
MAX_BACKOFF = timedelta(hours=6)
# A claimed run is tried by one worker; if that worker dies, the run is due again after this.
LEASE = timedelta(minutes=5)


def open_end_action(
    uow: UnitOfWork, payment: Payment, action: EndAction, reason: str, *, now: datetime
) -> None:
    """Record the end action of a payment whose recovery just ended unpaid (no commit)."""
    if action is EndAction.MARK_EXHAUSTED:
        return
    run = EndActionRun(
        merchant_id=payment.merchant_id,
        payment_id=payment.id,
        action=action,
        status=EndActionStatus.PENDING,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    if action is EndAction.LEAVE_INVOICE_OPEN:
        run.status, run.detail, run.completed_at = EndActionStatus.DONE, LEAVE_OPEN_DETAIL, now
        run.next_attempt_at = None
        announce(uow, payment, run, reason, now=now)
    uow.session.add(run)


def announce(
    uow: UnitOfWork, payment: Payment, run: EndActionRun, reason: str, *, now: datetime
) -> None:
    """The outbox event for a finished run: `payment.end_action` when done (or impossible at
    this processor, with why), `payment.end_action_failed` when every try failed."""
    failed = run.status is EndActionStatus.FAILED
    name = "payment.end_action_failed" if failed else "payment.end_action"
    payload = event_payload(
        payment,
        name,
        payment.state,
        reason,
        end_action=run.action,
        end_action_status=run.status,
        detail=run.detail if not failed else run.last_error,
    )
    emit(uow, payment, name, payload, now)


@dataclass(frozen=True)
class ClaimedEndAction:
    """A run leased to one worker for one try, with what the processor call needs."""

    id: uuid.UUID
    action: EndAction
    tries: int
    payment_state: PaymentState
    refs: BillingRefs
    connection: ProcessorConnection | None


async def claim_end_actions(
    uow: UnitOfWork, *, now: datetime, limit: int
) -> list[ClaimedEndAction]:
    """Due pending runs, each leased (`LEASE`) with its try counted before the processor is
    called; concurrent claimers skip each other's rows (no commit)."""
    rows = (
        await uow.session.execute(
            select(EndActionRun, Payment, col(Customer.external_ref), ProcessorConnection)
            .join(Payment, col(Payment.id) == col(EndActionRun.payment_id))
            .join(Customer, col(Customer.id) == col(Payment.customer_id))
            .outerjoin(
                ProcessorConnection,
                col(ProcessorConnection.id) == col(Payment.connection_id),
            )
            .where(
                col(EndActionRun.status) == EndActionStatus.PENDING,
                col(EndActionRun.next_attempt_at) <= now,
            )
            .order_by(col(EndActionRun.next_attempt_at))
            .limit(limit)
            .with_for_update(of=EndActionRun, skip_locked=True)
        )
    ).all()
    claimed = []
    for run, payment, customer_ref, connection in rows:
        run.tries += 1
        run.next_attempt_at = now + LEASE
        run.updated_at = now
        refs = BillingRefs(customer_ref, payment.invoice_ref, payment.subscription_ref)
        claimed.append(
            ClaimedEndAction(run.id, run.action, run.tries, payment.state, refs, connection)
        )
    await uow.session.flush()
    return claimed


def backoff(tries: int) -> timedelta:
    """The wait after the `tries`-th failed try."""
    wait: timedelta = FIRST_BACKOFF * (2 ** max(0, tries - 1))
    return min(MAX_BACKOFF, wait)


async def settle_end_action(
    uow: UnitOfWork,
    run_id: uuid.UUID,
    *,
    status: EndActionStatus | None,
    detail: str,
    now: datetime,
) -> EndActionStatus | None:
    """Record one try: `status` None is a failed try (`detail` is the error). Only a run still
    pending is changed, so of two workers that both carried it out (a lease that ran out) one
    records it and writes the event; returns the run's status after, None if it was settled
    already (no commit)."""
    run = (
        await uow.session.execute(
            select(EndActionRun).where(col(EndActionRun.id) == run_id).with_for_update()
        )
    ).scalar_one_or_none()
    if run is None or run.status is not EndActionStatus.PENDING:
        return None
    payment = await uow.session.get_one(Payment, run.payment_id)
    run.updated_at = now
    if status is None:
        run.last_error = detail[:2000]
        if run.tries < MAX_TRIES:
            run.next_attempt_at = now + backoff(run.tries)
            return run.status
        run.status = EndActionStatus.FAILED
    else:
        run.status, run.detail = status, detail[:1000]
    run.next_attempt_at = None
    run.completed_at = now
    if run.status is not EndActionStatus.SKIPPED:
        announce(uow, payment, run, f"end action {run.action}: {run.status}", now=now)
    return run.status
