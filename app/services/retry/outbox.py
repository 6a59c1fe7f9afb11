"""Domain events in the outbox, written in the transaction of the change they report."""

import uuid
from datetime import datetime
from typing import Any

from app.db import UnitOfWork
from app.enums import PaymentState
from app.models.payment import Payment
from app.models.retry import OutboxEvent
from app.services.retry.writes import Writes


def event_payload(
    payment: Payment, name: str, previous: PaymentState, reason: str
) -> dict[str, Any]:
    """The body of a payment's domain event, as the merchant's webhook receives it."""
    return {
        "type": name,
        "payment_id": str(payment.id),
        "processor": str(payment.processor),
        "processor_payment_id": payment.processor_payment_id,
        "invoice_ref": payment.invoice_ref,
        "subscription_ref": payment.subscription_ref,
        "state": str(payment.state),
        "previous_state": str(previous),
        "next_retry_at": payment.next_retry_at.isoformat() if payment.next_retry_at else None,
        "amount_minor": payment.amount_minor,
        "currency": payment.currency,
        "reason": reason,
    }


def emit(
    uow: UnitOfWork,
    payment: Payment,
    name: str,
    payload: dict[str, Any],
    now: datetime,
    *,
    writes: Writes | None = None,
) -> None:
    """A domain event in the outbox, in the transaction of the change it reports (held in
    `writes`, when given, for the caller to write with the rest of its batch)."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "merchant_id": payment.merchant_id,
        "payment_id": payment.id,
        "event_type": name[:64],
        "payload": payload,
        "created_at": now,
        "dispatched_at": None,
    }
    if writes is None:
        uow.session.add(OutboxEvent(**row))
    else:
        writes.insert(OutboxEvent, row)
