"""Fetching payments, attempts, customers and cards for the API."""

import uuid

from app.models.customer import CardCredential, Customer
from app.models.payment import Payment, PaymentAttempt
from app.services.payment import PaymentFilter, list_payments
from resolvers.context import Context
from resolvers.pagination import Page, after_key, make_page, page_size


async def payments_page(
    ctx: Context,
    *,
    merchant_id: uuid.UUID,
    filters: PaymentFilter,
    first: int | None,
    after: str | None,
) -> Page[Payment]:
    size = page_size(first, ctx.settings)
    key = after_key(after)
    async with ctx.db.session(ctx.require_principal().scope) as session:
        rows = await list_payments(
            session, merchant_id=merchant_id, filters=filters, first=size, before_key=key
        )
    return make_page(rows, size, lambda p: (p.first_failed_at, p.id))


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
