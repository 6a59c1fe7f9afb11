"""Reading payments, their attempts, customers and cards, within the session's scope."""

import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from app.enums import Actor, DeclineCategory, PaymentState, Processor
from app.errors import InvalidArgument
from app.models.customer import CardCredential, Customer
from app.models.payment import Payment, PaymentAttempt

LAST4 = re.compile(r"[0-9]{4}")
CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class PaymentFilter:
    """Filters of the payments list; empty tuples and None mean no filter.

    `search` matches exactly one of: the processor's payment id, the invoice reference, the
    customer's reference at the processor, or (four digits) the card's last four. Amounts are
    in minor units of one currency, so an amount range needs exactly one currency.
    """

    states: tuple[PaymentState, ...] = ()
    decline_categories: tuple[DeclineCategory, ...] = ()
    processors: tuple[Processor, ...] = ()
    currencies: tuple[str, ...] = ()
    recovered_by: tuple[Actor, ...] = ()
    failed_after: datetime | None = None
    failed_before: datetime | None = None
    next_retry_after: datetime | None = None
    next_retry_before: datetime | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    search: str | None = None

    def checked(self) -> "PaymentFilter":
        """The filter, or InvalidArgument naming the field that cannot be applied."""
        bad = [c for c in self.currencies if not CURRENCY.fullmatch(c)]
        if bad:
            raise InvalidArgument(
                f"currencies are ISO 4217 codes in capitals, not {bad[0]!r}",
                field="filter.currencies",
            )
        for name in ("amount_min", "amount_max"):
            value = getattr(self, name)
            if value is None:
                continue
            field = "filter." + ("amountMin" if name == "amount_min" else "amountMax")
            if value < 0:
                raise InvalidArgument("amounts are zero or more minor units", field=field)
            if len(self.currencies) != 1:
                raise InvalidArgument(
                    "an amount range needs exactly one currency in filter.currencies: minor "
                    "units of different currencies do not compare",
                    field=field,
                )
        for name in ("failed_after", "failed_before", "next_retry_after", "next_retry_before"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                head, _, tail = name.partition("_")
                field = "filter." + head + "".join(w.title() for w in tail.split("_"))
                raise InvalidArgument(
                    "times need a UTC offset (e.g. 2026-11-01T00:00:00Z)", field=field
                )
        if self.search is not None and not self.search.strip():
            raise InvalidArgument("search must not be blank", field="filter.search")
        if self.search is not None and len(self.search) > 255:
            raise InvalidArgument("search is at most 255 characters", field="filter.search")
        return self


def _search(merchant_id: uuid.UUID, term: str) -> ColumnElement[bool]:
    term = term.strip()
    matches = [
        col(Payment.processor_payment_id) == term,
        col(Payment.invoice_ref) == term,
        col(Payment.customer_id).in_(
            select(col(Customer.id)).where(
                col(Customer.merchant_id) == merchant_id, col(Customer.external_ref) == term
            )
        ),
    ]
    if LAST4.fullmatch(term):
        matches.append(
            col(Payment.card_id).in_(
                select(col(CardCredential.id)).where(
                    col(CardCredential.merchant_id) == merchant_id,
                    col(CardCredential.last4) == term,
                )
            )
        )
    return or_(*matches)


def _filtered(query: Any, merchant_id: uuid.UUID, filters: PaymentFilter) -> Any:
    if filters.states:
        query = query.where(col(Payment.state).in_(filters.states))
    if filters.decline_categories:
        query = query.where(col(Payment.decline_category).in_(filters.decline_categories))
    if filters.processors:
        query = query.where(col(Payment.processor).in_(filters.processors))
    if filters.currencies:
        query = query.where(col(Payment.currency).in_(filters.currencies))
    if filters.recovered_by:
        query = query.where(col(Payment.recovered_by).in_(filters.recovered_by))
    if filters.failed_after is not None:
        query = query.where(col(Payment.first_failed_at) >= filters.failed_after)
    if filters.failed_before is not None:
        query = query.where(col(Payment.first_failed_at) < filters.failed_before)
    if filters.next_retry_after is not None:
        query = query.where(col(Payment.next_retry_at) >= filters.next_retry_after)
    if filters.next_retry_before is not None:
        query = query.where(col(Payment.next_retry_at) < filters.next_retry_before)
    if filters.amount_min is not None:
        query = query.where(col(Payment.amount_minor) >= filters.amount_min)
    if filters.amount_max is not None:
        query = query.where(col(Payment.amount_minor) <= filters.amount_max)
    if filters.search is not None:
        query = query.where(_search(merchant_id, filters.search))
    return query


def matching(query: Any, merchant_id: uuid.UUID, filters: PaymentFilter) -> Any:
    """`query` over payments narrowed to the merchant's that `filters` match (checked first),
    as the payments list narrows them."""
    query = query.where(col(Payment.merchant_id) == merchant_id)
    return _filtered(query, merchant_id, filters.checked())


async def list_payments(
    session: AsyncSession,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    first: int,
    before_key: tuple[datetime, uuid.UUID] | None,
) -> Sequence[Payment]:
    """One page of a merchant's payments, newest failure first; `first + 1` rows are read so
    the caller knows whether another page follows.

    Several states are read as one newest-first page per state, merged: an index on
    (merchant, state, failure time) gives each its order, where one scan of the merchant's
    payments by failure time would filter out every row in another state (all of them, when a
    time bound leaves few matches)."""
    filters = filters.checked()
    if len(filters.states) < 2:
        query = newest_first(
            select(Payment), merchant_id, filters, first=first, before_key=before_key
        )
        return (await session.execute(query)).scalars().all()
    merged = union_all(
        *(
            newest_first(
                select(Payment),
                merchant_id,
                replace(filters, states=(state,)),
                first=first,
                before_key=before_key,
            )
            for state in filters.states
        )
    ).subquery()
    row = aliased(Payment, merged)
    query = (
        select(row).order_by(col(row.first_failed_at).desc(), col(row.id).desc()).limit(first + 1)
    )
    return (await session.execute(query)).scalars().all()


def newest_first(
    base: Any,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    *,
    first: int,
    before_key: tuple[datetime, uuid.UUID] | None,
) -> Any:
    """`base` (a select from payments) as one newest-failure-first page of the merchant's
    payments `filters` match: `first + 1` rows from `before_key` on. Callers with several
    states merge one page per state, as `list_payments` does."""
    query = (
        base.where(Payment.merchant_id == merchant_id)
        .order_by(col(Payment.first_failed_at).desc(), col(Payment.id).desc())
        .limit(first + 1)
    )
    query = _filtered(query, merchant_id, filters)
    if before_key is not None:
        query = query.where(
            tuple_(col(Payment.first_failed_at), col(Payment.id)) < tuple_(*before_key)
        )
    return query


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
