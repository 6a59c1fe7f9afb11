"""Reading payments, their attempts, customers and cards, within the session's scope."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.enums import DeclineCategory, PaymentState, Processor
from app.models.payment import Payment, PaymentAttempt


@dataclass(frozen=True)
class PaymentFilter:
    """Filters of the payments list; empty tuples and None mean no filter."""

    states: tuple[PaymentState, ...] = ()
    decline_categories: tuple[DeclineCategory, ...] = ()
    processors: tuple[Processor, ...] = ()
    failed_after: datetime | None = None
    failed_before: datetime | None = None


async def list_payments(
    session: AsyncSession,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    first: int,
    before_key: tuple[datetime, uuid.UUID] | None,
) -> Sequence[Payment]:
    """One page of a merchant's payments, newest failure first; `first + 1` rows are read so
    the caller knows whether another page follows."""
    query = (
        select(Payment)
        .where(Payment.merchant_id == merchant_id)
        .order_by(col(Payment.first_failed_at).desc(), col(Payment.id).desc())
        .limit(first + 1)
    )
    if filters.states:
        query = query.where(col(Payment.state).in_(filters.states))
    if filters.decline_categories:
        query = query.where(col(Payment.decline_category).in_(filters.decline_categories))
    if filters.processors:
        query = query.where(col(Payment.processor).in_(filters.processors))
    if filters.failed_after is not None:
        query = query.where(Payment.first_failed_at >= filters.failed_after)
    if filters.failed_before is not None:
        query = query.where(Payment.first_failed_at < filters.failed_before)
    if before_key is not None:
        query = query.where(
            tuple_(col(Payment.first_failed_at), col(Payment.id)) < tuple_(*before_key)
        )
    return (await session.execute(query)).scalars().all()


async def attempts_by_payment_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[PaymentAttempt]]:
    rows = (
        await session.execute(
            select(PaymentAttempt)
            .where(col(PaymentAttempt.payment_id).in_(ids))
            .order_by(col(PaymentAttempt.payment_id), col(PaymentAttempt.number))
        )
    ).scalars()
    grouped: dict[uuid.UUID, list[PaymentAttempt]] = defaultdict(list)
    for attempt in rows:
        grouped[attempt.payment_id].append(attempt)
    return grouped
