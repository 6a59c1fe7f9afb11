"""A merchant's payments for export, read in keyset batches so memory stays flat at any size.

Each batch is the payments list's own page (`page_reads`: the same filter, order, keyset
and indexes as the API's `payments` connection) with the columns an export shows, its
customer's reference and its card's brand and last four joined, read in a short session of
its own as plain rows. No long transaction is held: a payment is exported at most once (the
keyset, failure time then id, never changes), in the state it had when its batch was read.
"""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select as select_columns
from sqlalchemy import union_all
from sqlmodel import col, select

from app.db import Database
from app.enums import Actor, DeclineCategory, PaymentState, Processor
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services.payment import DEFAULT_ORDER, PaymentFilter, page_reads
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


# What an export reads of a payment, its customer and its card: no ORM objects, one row each.
_COLUMNS: tuple[Any, ...] = (
    col(Payment.id),
    col(Payment.processor),
    col(Payment.processor_payment_id),
    col(Payment.state),
    col(Payment.amount_minor),
    col(Payment.currency),
    col(Payment.decline_category),
    col(Payment.decline_raw_code),
    col(Payment.first_failed_at),
    col(Payment.next_retry_at),
    col(Payment.recovered_at),
    col(Payment.recovered_by),
    col(Payment.attempt_count),
    col(Payment.invoice_ref),
    col(Payment.subscription_ref),
    col(Customer.external_ref).label("customer_ref"),
    col(CardCredential.brand).label("card_brand"),
    col(CardCredential.last4).label("card_last4"),
)


def _base() -> Any:
    return (
        select_columns(*_COLUMNS)
        .select_from(Payment)
        .join(Customer, col(Customer.id) == col(Payment.customer_id))
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
    )


def _batch_query(
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    *,
    size: int,
    before_key: tuple[datetime, uuid.UUID] | None,
) -> Any:
    """The payments list's page (`page_reads`: its filter, order, keyset and, for several
    states, one read per state merged) with the export's columns."""
    base = _base().where(col(Payment.merchant_id) == merchant_id)
    reads = page_reads(base, merchant_id, filters, DEFAULT_ORDER, size - 1, before_key)
    if len(reads) == 1:
        return reads[0]
    merged = union_all(*reads).subquery()
    return (
        select_columns(merged)
        .order_by(merged.c.first_failed_at.desc(), merged.c.id.desc())
        .limit(size)
    )


async def export_batches(
    db: Database,
    scope: Scope,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    batch_size: int | None = None,
) -> AsyncIterator[list[ExportRow]]:
    """The merchant's payments matching `filters`, newest failure first, `batch_size` (by
    default BATCH_SIZE) at a time, each batch one statement in a short session of its own; the
    last batch may be shorter, and nothing is yielded when none match."""
    filters = filters.checked()
    size = max(1, batch_size or BATCH_SIZE)
    key: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with db.session(scope) as session:
            query = _batch_query(merchant_id, filters, size=size, before_key=key)
            rows = [ExportRow(*row) for row in (await session.execute(query)).all()]
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return
        key = (rows[-1].failed_at, rows[-1].id)


async def merchant_visible(db: Database, scope: Scope, merchant_id: uuid.UUID) -> bool:
    """Whether the merchant exists and the scope may see it (an export's first check)."""
    if not scope.can_see(merchant_id):
        return False
    async with db.session(scope) as session:
        found = await session.execute(
            select(col(Merchant.id)).where(col(Merchant.id) == merchant_id)
        )
        return found.scalar_one_or_none() is not None
