"""Reading a merchant's audit log for the API."""

import uuid

from app.models.audit import AuditLog
from resolvers.context import Context
from resolvers.pagination import Page, after_key, make_page, page_size


async def audit_page(
    ctx: Context, *, merchant_id: uuid.UUID, first: int | None, after: str | None
) -> Page[AuditLog]:
    size = page_size(first, ctx.settings)
    key = after_key(after)
    rows = await ctx.loaders.audit_page_by_merchant_id.load((merchant_id, size, key))
    return make_page(rows, size, lambda e: (e.created_at, e.id))
