"""Reading payments, their attempts, customers and cards, within the session's scope."""

import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import ColumnElement, Uuid, any_, bindparam, func, or_, true, tuple_, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from app.bulk import unnest
from app.enums import Actor, DeclineCategory, PaymentState, Processor
from app.errors import InvalidArgument, InvalidCursor
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
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


def _search(merchant_id: Any, term: str) -> ColumnElement[bool]:
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


def _filtered(query: Any, merchant_id: Any, filters: PaymentFilter) -> Any:
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


class PaymentOrderField(StrEnum):
    """What the payments list is sorted by; ties are broken by the payment's id."""

    FAILED_AT = "failed_at"
    NEXT_RETRY_AT = "next_retry_at"
    AMOUNT = "amount"
    RECOVERED_AT = "recovered_at"


class OrderDirection(StrEnum):
    ASC = "asc"
    DESC = "desc"


_SORT_COLUMNS = {
    PaymentOrderField.FAILED_AT: "first_failed_at",
    PaymentOrderField.NEXT_RETRY_AT: "next_retry_at",
    PaymentOrderField.AMOUNT: "amount_minor",
    PaymentOrderField.RECOVERED_AT: "recovered_at",
}
_NULLABLE = frozenset({PaymentOrderField.NEXT_RETRY_AT, PaymentOrderField.RECOVERED_AT})

# A page's position: the sort value of its last payment (None: a payment without one) and its id.
SortValue = datetime | int | None
PaymentKey = tuple[SortValue, uuid.UUID]


@dataclass(frozen=True)
class PaymentOrder:
    """The payments list's order: a field, then the payment's id, in one direction.

    Payments without a value (no next retry, not recovered) come after every payment with one,
    in either direction, among themselves by id in the same direction. AMOUNT needs exactly
    one currency in the filter: minor units of different currencies do not compare."""

    field: PaymentOrderField = PaymentOrderField.FAILED_AT
    direction: OrderDirection = OrderDirection.DESC

    @property
    def descending(self) -> bool:
        return self.direction is OrderDirection.DESC

    @property
    def nullable(self) -> bool:
        return self.field in _NULLABLE

    @property
    def name(self) -> str:
        """The order as a cursor records it, e.g. `NEXT_RETRY_AT:ASC`."""
        return f"{self.field.name}:{self.direction.name}"

    def value(self, payment: Payment) -> SortValue:
        value: SortValue = getattr(payment, _SORT_COLUMNS[self.field])
        return value

    def column(self, entity: Any = Payment) -> Any:
        return getattr(entity, _SORT_COLUMNS[self.field])

    def checked(self, filters: PaymentFilter) -> "PaymentOrder":
        if self.field is PaymentOrderField.AMOUNT and len(filters.currencies) != 1:
            raise InvalidArgument(
                "ordering by amount needs exactly one currency in filter.currencies: minor "
                "units of different currencies do not compare",
                field="orderBy.field",
            )
        return self

    def outer(self, entity: Any) -> tuple[Any, ...]:
        """ORDER BY of merged pages (over `entity`, an alias of their union)."""
        column, key = self.column(entity), entity.id
        if self.descending:
            return column.desc().nulls_last(), key.desc()
        return column.asc().nulls_last(), key.asc()

    def segments(self, after: PaymentKey | None) -> list[tuple[bool, PaymentKey | None]]:
        """The parts of the order a page reads, in order: (payments without a value?, the
        position to continue after in that part). Payments with a value come first; a page
        after a payment without one reads only those."""
        parts = [False, True] if self.nullable else [False]
        if after is None:
            return [(nulls, None) for nulls in parts]
        if after[0] is None and not self.nullable:
            raise InvalidCursor("malformed cursor: this order has no payments without a value")
        start = 1 if after[0] is None else 0
        return [(parts[start], after)] + [(nulls, None) for nulls in parts[start + 1 :]]

    def segment(self, query: Any, nulls: bool, after: PaymentKey | None) -> Any:
        """`query` narrowed to one part of the order, sorted, after `after` in it."""
        column, key = self.column(), col(Payment.id)
        if nulls:
            query = query.where(column.is_(None)).order_by(
                key.desc() if self.descending else key.asc()
            )
            if after is not None:
                query = query.where(key < after[1] if self.descending else key > after[1])
            return query
        if self.nullable:
            query = query.where(column.is_not(None))
        if self.descending:
            query = query.order_by(column.desc(), key.desc())
        else:
            query = query.order_by(column.asc(), key.asc())
        if after is not None:
            position = tuple_(column, key)
            bound = tuple_(*after)
            query = query.where(position < bound if self.descending else position > bound)
        return query


DEFAULT_ORDER = PaymentOrder()


def _pages(
    base: Any,
    scope: Any,
    filters: PaymentFilter,
    order: PaymentOrder,
    first: int,
    after: PaymentKey | None,
    *,
    per_state: bool,
) -> list[Any]:
    """The sorted, limited reads whose union holds a page: one per part of the order (and,
    with `per_state`, per state: an index on (merchant, state, failure time) gives each its
    order, where one scan by failure time would filter out every row in another state)."""
    groups: list[tuple[PaymentState, ...]] | None = None
    if per_state and len(filters.states) > 1:
        groups = [(state,) for state in filters.states]
    reads = []
    for nulls, position in order.segments(after):
        for states in groups or [filters.states]:
            query = _filtered(base, scope, replace(filters, states=states))
            reads.append(order.segment(query, nulls, position).limit(first + 1))
    return reads


async def list_payments(
    session: AsyncSession,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    first: int,
    before_key: PaymentKey | None,
    order: PaymentOrder = DEFAULT_ORDER,
) -> Sequence[Payment]:
    """One page of a merchant's payments in `order` (newest failure first by default), after
    `before_key`; `first + 1` rows are read so the caller knows whether another page follows.

    Every order reads an index led by the merchant: (merchant, failure time, id), (merchant,
    state, failure time) per state, (merchant, next retry, id), (merchant, recovery time, id),
    (merchant, currency, amount, id)."""
    filters = filters.checked()
    order = order.checked(filters)
    base = select(Payment).where(Payment.merchant_id == merchant_id)
    reads = page_reads(base, merchant_id, filters, order, first, before_key)
    if len(reads) == 1:
        return (await session.execute(reads[0])).scalars().all()
    merged = union_all(*reads).subquery()
    row = aliased(Payment, merged)
    query = select(row).order_by(*order.outer(row)).limit(first + 1)
    return (await session.execute(query)).scalars().all()


def page_reads(
    base: Any,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    order: PaymentOrder,
    first: int,
    before_key: PaymentKey | None,
) -> list[Any]:
    """The reads (`base`: a select over one merchant's payments, any columns) whose union,
    sorted by `order` and cut to `first + 1` rows, is the page after `before_key`: what the
    payments list reads, for another caller (the export) to read the same rows."""
    per_state = order.field is PaymentOrderField.FAILED_AT
    return _pages(base, merchant_id, filters, order, first, before_key, per_state=per_state)


async def payments_by_merchant_ids(
    session: AsyncSession,
    merchant_ids: Sequence[uuid.UUID],
    *,
    filters: PaymentFilter,
    order: PaymentOrder,
    first: int,
    before_key: PaymentKey | None,
) -> dict[uuid.UUID, list[Payment]]:
    """The same page of several merchants' payments (a nested list) in one statement: each
    merchant's reads as `list_payments` makes them, ranked per merchant."""
    filters = filters.checked()
    order = order.checked(filters)
    if len(merchant_ids) == 1:
        [merchant_id] = merchant_ids
        rows = await list_payments(
            session,
            merchant_id=merchant_id,
            filters=filters,
            first=first,
            before_key=before_key,
            order=order,
        )
        return {merchant_id: list(rows)}
    per_state = order.field is PaymentOrderField.FAILED_AT
    reads = [
        read
        for merchant_id in merchant_ids
        for read in _pages(
            select(Payment).where(Payment.merchant_id == merchant_id),
            merchant_id,
            filters,
            order,
            first,
            before_key,
            per_state=per_state,
        )
    ]
    return await _ranked(session, union_all(*reads).subquery(), "merchant_id", order, first)


async def _ranked(
    session: AsyncSession, merged: Any, parent: str, order: PaymentOrder, first: int
) -> dict[uuid.UUID, list[Payment]]:
    """The first `first + 1` payments of each parent (the `parent` column) among `merged`."""
    row = aliased(Payment, merged)
    rank = func.row_number().over(partition_by=merged.c[parent], order_by=order.outer(row))
    ranked = merged.select().add_columns(rank.label("rank")).subquery()
    payment = aliased(Payment, ranked)
    rows = await session.execute(
        select(payment).where(ranked.c.rank <= first + 1).order_by(ranked.c[parent], ranked.c.rank)
    )
    grouped: dict[uuid.UUID, list[Payment]] = defaultdict(list)
    for found in rows.scalars():
        grouped[getattr(found, parent)].append(found)
    return grouped


async def payments_by_customer_ids(
    session: AsyncSession,
    customer_ids: Sequence[uuid.UUID],
    *,
    filters: PaymentFilter,
    order: PaymentOrder,
    first: int,
    before_key: PaymentKey | None,
) -> dict[uuid.UUID, list[Payment]]:
    """The same page of several customers' payments in one statement: for each customer (a
    LATERAL join over their ids) the sorted, limited reads of a page, `first + 1` each."""
    filters = filters.checked()
    order = order.checked(filters)
    customers = unnest(customer_ids, Uuid)
    customer_id = customers.c.value
    base = select(Payment).where(col(Payment.customer_id) == customer_id)
    reads = []
    merchant = col(Payment.merchant_id)
    for read in _pages(base, merchant, filters, order, first, before_key, per_state=False):
        page = read.lateral()
        reads.append(select(page).select_from(customers).join(page, true()))
    merged = (reads[0] if len(reads) == 1 else union_all(*reads)).subquery()
    return await _ranked(session, merged, "customer_id", order, first)


async def list_viewer_payments(
    session: AsyncSession,
    *,
    merchant_ids: frozenset[uuid.UUID] | None,
    filters: PaymentFilter,
    order: PaymentOrder,
    first: int,
    before_key: PaymentKey | None,
) -> Sequence[Payment]:
    """One page of the payments of every merchant in `merchant_ids` (None: every merchant),
    merged: for each merchant (a LATERAL join over the merchants) the sorted, limited reads of
    its own indexes, `first + 1` each, then the best `first + 1` of them all."""
    filters = filters.checked()
    order = order.checked(filters)
    merchant = col(Merchant.id)
    base = select(Payment).where(col(Payment.merchant_id) == merchant)
    owner = col(Payment.merchant_id)
    reads = []
    for read in _pages(base, owner, filters, order, first, before_key, per_state=False):
        page = read.lateral()
        outer = select(page).select_from(Merchant).join(page, true())
        if merchant_ids is not None:
            outer = outer.where(merchant.in_(sorted(merchant_ids)))
        reads.append(outer.order_by(*order.outer(page.c)).limit(first + 1))
    merged = (reads[0] if len(reads) == 1 else union_all(*reads)).subquery()
    row = aliased(Payment, merged)
    query = select(row).order_by(*order.outer(row)).limit(first + 1)
    return (await session.execute(query)).scalars().all()


# Whose payments a count is of: a merchant's, a customer's, or those the caller may see.
PaymentsOf = Literal["merchant", "customer", "viewer"]


def payment_count_query(
    of: PaymentsOf,
    parent_id: uuid.UUID | None,
    filters: PaymentFilter,
    merchant_ids: frozenset[uuid.UUID] | None,
) -> Any:
    """The rows `totalCount` counts for a payments list; the scope is in its own WHERE clause
    (see `bounded_counts`), the parent's and, across merchants, the caller's."""
    filters = filters.checked()
    query = select(col(Payment.id))
    owner: Any = col(Payment.merchant_id)
    if of == "merchant":
        query = query.where(col(Payment.merchant_id) == parent_id)
        owner = parent_id
    elif of == "customer":
        query = query.where(col(Payment.customer_id) == parent_id)
    if merchant_ids is not None:
        query = query.where(col(Payment.merchant_id).in_(sorted(merchant_ids)))
    return _filtered(query, owner, filters)


# Built once (with its cache key): the payments' ids bound as one array, `ids`.
_ATTEMPTS_BY_PAYMENT_IDS = (
    select(PaymentAttempt)
    .where(col(PaymentAttempt.payment_id) == any_(bindparam("ids", type_=postgresql.ARRAY(Uuid))))
    .order_by(col(PaymentAttempt.payment_id), col(PaymentAttempt.number))
)


async def attempts_by_payment_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[PaymentAttempt]]:
    rows = (await session.execute(_ATTEMPTS_BY_PAYMENT_IDS, {"ids": list(ids)})).scalars()
    grouped: dict[uuid.UUID, list[PaymentAttempt]] = defaultdict(list)
    for attempt in rows:
        grouped[attempt.payment_id].append(attempt)
    return grouped
