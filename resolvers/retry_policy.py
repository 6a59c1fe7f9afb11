"""Reading and changing retry policies for the API."""

import uuid

from app.models.retry_policy import RetryPolicy
from app.services.retry_policy import PolicyChanges, update_retry_policy
from resolvers.context import Context
from resolvers.ids import decode_id


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
