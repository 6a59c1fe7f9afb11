"""Domain events in the outbox, written in the transaction of the change they report."""

import uuid
from datetime import datetime
from typing import Any

from app.db import UnitOfWork
from app.enums import PaymentState
from app.models.retry import OutboxEvent
from app.services.retry.rows import PaymentLike
from app.services.retry.writes import Writes
from app.webhook_events import event_type, isoformat, version_of


def event_payload(
    payment: PaymentLike, name: str, previous: PaymentState, reason: str, **extra: Any
) -> dict[str, Any]:
    """The body of a payment's domain event, as the merchant's webhook receives it, built by
    its type's model (`app/webhook_events.py`): what is stored is what the schema publishes.
    `extra` holds the fields a type adds to every payment event's."""
    return event_type(name).payload(
        payment_id=str(payment.id),
        processor=payment.processor,
        processor_payment_id=payment.processor_payment_id,
        invoice_ref=payment.invoice_ref,
        subscription_ref=payment.subscription_ref,
        state=payment.state,
        previous_state=previous,
        next_retry_at=isoformat(payment.next_retry_at),
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        reason=reason,
        **extra,
    )


def outbox_row(
    payment: PaymentLike, name: str, payload: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The outbox row of one of the payment's domain events."""
    return {
        "id": uuid.uuid4(),
        "merchant_id": payment.merchant_id,
        "payment_id": payment.id,
        "event_type": name,
        "version": version_of(name),
        "payload": payload,
        "created_at": now,
        "dispatched_at": None,
    }


def emit(
    uow: UnitOfWork,
    payment: PaymentLike,
    name: str,
    payload: dict[str, Any],
    now: datetime,
    *,
    writes: Writes | None = None,
) -> None:
    """A domain event in the outbox, in the transaction of the change it reports (held in
    `writes`, when given, for the caller to write with the rest of its batch)."""
    row = outbox_row(payment, name, payload, now)
    if writes is None:
        uow.session.add(OutboxEvent(**row))
    else:
        writes.insert(OutboxEvent, row)
