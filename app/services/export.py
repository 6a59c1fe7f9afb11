"""A merchant's payments for export, read in keyset batches so memory stays flat at any size.

Each batch is the payments list's own page (`list_payments`: the same filter, order and
indexes as the API's `payments` connection), read in a short session of its own, with the
customers' references and the cards' brand and last four read by id beside it. No long
transaction is held: a payment is exported at most once (the keyset, failure time then id,
never changes), in the state it had when its batch was read.
"""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select

from app.db import Database
from app.enums import Actor, DeclineCategory, PaymentState, Processor
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services.payment import PaymentFilter, list_payments
from app.tenancy import Scope

BATCH_SIZE = 2_000


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One exported payment: money as integer minor units and currency; of the card, only
    what identifies it to a person (brand, last four), never a card number."""

    id: uuid.UUID
    processor: Processor
    processor_payment_id: str
    state: PaymentState
    amount_minor: int
    currency: str
    decline_category: DeclineCategory
    decline_raw_code: str | None
    failed_at: datetime
    next_retry_at: datetime | None
    recovered_at: datetime | None
    recovered_by: Actor | None
    attempt_count: int
    invoice_ref: str | None
    subscription_ref: str | None
    customer_ref: str | None
    card_brand: str | None
    card_last4: str | None


async def export_batches(
    db: Database,
    scope: Scope,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    batch_size: int | None = None,
) -> AsyncIterator[list[ExportRow]]:
    """The merchant's payments matching `filters`, newest failure first, `batch_size` (by
    default BATCH_SIZE) at a time; the last batch may be shorter, and nothing is yielded when
    none match."""
    filters = filters.checked()
    batch_size = max(2, batch_size or BATCH_SIZE)
    key: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with db.session(scope) as session:
            # list_payments reads `first + 1` rows (its page and a look-ahead): all of them here.
            payments = await list_payments(
                session,
                merchant_id=merchant_id,
                filters=filters,
                first=batch_size - 1,
                before_key=key,
            )
            if not payments:
                return
            customer_ids = list({p.customer_id for p in payments})
            card_ids = list({p.card_id for p in payments if p.card_id is not None})
            customers = dict(
                (
                    await session.execute(
                        select(col(Customer.id), col(Customer.external_ref)).where(
                            col(Customer.id).in_(customer_ids)
                        )
                    )
                ).all()
            )
            cards = {
                card_id: (brand, last4)
                for card_id, brand, last4 in (
                    await session.execute(
                        select(
                            col(CardCredential.id),
                            col(CardCredential.brand),
                            col(CardCredential.last4),
                        ).where(col(CardCredential.id).in_(card_ids))
                    )
                ).all()
            }
        rows = [_row(p, customers, cards) for p in payments]
        yield rows
        if len(payments) < batch_size:
            return
        last = payments[-1]
        key = (last.first_failed_at, last.id)


def _row(
    p: Payment,
    customers: dict[uuid.UUID, str],
    cards: dict[uuid.UUID, tuple[str, str]],
) -> ExportRow:
    card = None if p.card_id is None else cards.get(p.card_id)
    brand, last4 = card if card is not None else (None, None)
    return ExportRow(
        id=p.id,
        processor=p.processor,
        processor_payment_id=p.processor_payment_id,
        state=p.state,
        amount_minor=p.amount_minor,
        currency=p.currency,
        decline_category=p.decline_category,
        decline_raw_code=p.decline_raw_code,
        failed_at=p.first_failed_at,
        next_retry_at=p.next_retry_at,
        recovered_at=p.recovered_at,
        recovered_by=p.recovered_by,
        attempt_count=p.attempt_count,
        invoice_ref=p.invoice_ref,
        subscription_ref=p.subscription_ref,
        customer_ref=customers.get(p.customer_id),
        card_brand=brand,
        card_last4=last4,
    )


async def merchant_visible(db: Database, scope: Scope, merchant_id: uuid.UUID) -> bool:
    """Whether the merchant exists and the scope may see it (an export's first check)."""
    if not scope.can_see(merchant_id):
        return False
    async with db.session(scope) as session:
        found = await session.execute(
            select(col(Merchant.id)).where(col(Merchant.id) == merchant_id)
        )
        return found.scalar_one_or_none() is not None
