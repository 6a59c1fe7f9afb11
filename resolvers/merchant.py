"""Fetching merchants for the API."""

from app.models.merchant import Merchant
from app.services.merchant import list_merchants
from resolvers.context import Context
from resolvers.ids import decode_id
from resolvers.pagination import Page, after_key, make_page, page_size


async def merchants_page(ctx: Context, *, first: int | None, after: str | None) -> Page[Merchant]:
    size = page_size(first, ctx.settings)
    key = after_key(after)
    async with ctx.db.session(ctx.require_principal().scope) as session:
        rows = await list_merchants(session, first=size, after=key)
    return make_page(rows, size, lambda m: (m.created_at, m.id))


async def merchant_by_global_id(ctx: Context, global_id: str) -> Merchant | None:
    ctx.require_principal()
    _, key = decode_id(global_id, expected="Merchant")
    return await ctx.loaders.merchant_by_id.load(key)
