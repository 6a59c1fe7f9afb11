"""Fetching payments, attempts, customers and cards for the API."""

import uuid
from datetime import datetime

from app.errors import InvalidArgument, InvalidCursor
from app.models.customer import CardCredential, Customer
from app.models.payment import Payment, PaymentAttempt
from app.services.payment import (
    DEFAULT_ORDER,
    PaymentFilter,
    PaymentKey,
    PaymentOrder,
    PaymentOrderField,
    list_viewer_payments,
)
from resolvers.context import Context
from resolvers.counts import Counter, CountOf, counter
from resolvers.ids import decode_sorted_cursor, encode_cursor, encode_sorted_cursor
from resolvers.pagination import Page, cursor_page, page_size


def payment_cursor(order: PaymentOrder, payment: Payment) -> str:
    """The cursor of a payment in a list in `order`: the default order's cursors keep their
    (failure time, id) form, so cursors handed out before orders existed stay valid."""
    if order == DEFAULT_ORDER:
        return encode_cursor(payment.first_failed_at, payment.id)
    value = order.value(payment)
    return encode_sorted_cursor(
        order.name, value.isoformat() if isinstance(value, datetime) else value, payment.id
    )


def payment_after(order: PaymentOrder, after: str | None) -> PaymentKey | None:
    """The position a cursor names, in `order`; a cursor of another order is refused."""
    if after is None:
        return None
    name, raw, key = decode_sorted_cursor(after)
    name = DEFAULT_ORDER.name if name is None else name
    if name != order.name:
        raise InvalidArgument(
            f"this cursor belongs to the order {name}, not {order.name}: pass the orderBy it "
            "was read with, or start again without `after`",
            field="after",
        )
    if raw is None:
        if not order.nullable:
            raise InvalidCursor(f"malformed cursor {after[:64]!r}")
        return None, key
    if order.field is PaymentOrderField.AMOUNT:
        if not isinstance(raw, int):
            raise InvalidCursor(f"malformed cursor {after[:64]!r}")
        return raw, key
    try:
        at = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InvalidCursor(f"malformed cursor {after[:64]!r}")
    return at, key


async def payments_page(
    ctx: Context,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    first: int | None,
    after: str | None,
    order: PaymentOrder = DEFAULT_ORDER,
) -> tuple[Page[Payment], Counter]:
    """A merchant's payments, through a loader: the merchants of one request (a nested list)
    are read in one statement, one merchant's as `list_payments` reads it."""
    ctx.require_principal()
    size = page_size(first, ctx.settings)
    filters = filters.checked()
    order = order.checked(filters)
    key = payment_after(order, after)
    rows = await ctx.loaders.merchant_payments.load((merchant_id, filters, order, size, key))
    page = cursor_page(rows, size, lambda p: payment_cursor(order, p))
    return page, counter(ctx, CountOf("merchant_payments", merchant_id, filters))


async def customer_payments_page(
    ctx: Context,
    *,
    customer_id: uuid.UUID,
    filters: PaymentFilter,
    first: int | None,
    after: str | None,
    order: PaymentOrder,
) -> tuple[Page[Payment], Counter]:
    """A customer's payments, through a loader: the customers of one request are read in
    one statement."""
    size = page_size(first, ctx.settings)
    filters = filters.checked()
    order = order.checked(filters)
    key = payment_after(order, after)
    rows = await ctx.loaders.customer_payments.load((customer_id, filters, order, size, key))
    page = cursor_page(rows, size, lambda p: payment_cursor(order, p))
    return page, counter(ctx, CountOf("customer_payments", customer_id, filters))


async def viewer_payments_page(
    ctx: Context,
    *,
    filters: PaymentFilter,
    first: int | None,
    after: str | None,
    order: PaymentOrder,
) -> tuple[Page[Payment], Counter]:
    """The payments of every merchant the caller may see."""
    principal = ctx.require_principal()
    size = page_size(first, ctx.settings)
    key = payment_after(order, after)
    async with ctx.db.session(principal.scope) as session:
        rows = await list_viewer_payments(
            session,
            merchant_ids=principal.scope.merchant_ids,
            filters=filters,
            first=size,
            before_key=key,
            order=order,
        )
    page = cursor_page(rows, size, lambda p: payment_cursor(order, p))
    return page, counter(ctx, CountOf("viewer_payments", None, filters))


async def attempts(ctx: Context, payment_id: uuid.UUID) -> list[PaymentAttempt]:
    return await ctx.loaders.attempts_by_payment_id.load(payment_id)


async def customer(ctx: Context, customer_id: uuid.UUID) -> Customer | None:
    return await ctx.loaders.customer_by_id.load(customer_id)


async def card(ctx: Context, card_id: uuid.UUID | None) -> CardCredential | None:
    return None if card_id is None else await ctx.loaders.card_by_id.load(card_id)


async def cards(ctx: Context, payments: list[Payment]) -> dict[uuid.UUID, CardCredential | None]:
    """The cards of these payments by id, in one batch of the same loader as `card`."""
    ids = list(dict.fromkeys(p.card_id for p in payments if p.card_id is not None))
    return dict(zip(ids, await ctx.loaders.card_by_id.load_many(ids), strict=True))
