"""Reading and changing retry policies for the API."""

import uuid

from app.models.retry_policy import RetryPolicy
from app.services.retry_policy import (
    PolicyChanges,
    PolicyVersion,
    policy_history,
    update_retry_policy,
)
from resolvers.context import Context
from resolvers.ids import decode_id
from resolvers.pagination import Page, after_key, make_page, page_size


async def current(ctx: Context, merchant_id: uuid.UUID) -> RetryPolicy | None:
    return await ctx.loaders.retry_policy_by_merchant_id.load(merchant_id)


async def update(
    ctx: Context,
    *,
    merchant_global_id: str,
    expected_version: int,
    changes: PolicyChanges,
    reason: str,
) -> RetryPolicy:
    """Apply a policy change in its own unit of work; raises domain errors on refusal."""
    async with ctx.change() as (uow, by):
        _, merchant_id = decode_id(merchant_global_id, expected="Merchant")
        return await update_retry_policy(
            uow,
            merchant_id=merchant_id,
            expected_version=expected_version,
            changes=changes,
            reason=reason,
            **by,
        )


async def history(
    ctx: Context, merchant_id: uuid.UUID, *, first: int | None, after: str | None
) -> Page[PolicyVersion]:
    """A page of the merchant's policy versions, newest first, each with what it changed."""
    size = page_size(first, ctx.settings)
    key = after_key(after)
    async with ctx.db.session(ctx.require_principal().scope) as session:
        rows = await policy_history(
            session, merchant_id, first=size, after_id=None if key is None else key[1]
        )
    return make_page(rows, size, lambda v: (v.policy.created_at, v.policy.id))
