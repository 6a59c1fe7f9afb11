"""Reading and changing retry policies for the API."""

import uuid
from dataclasses import dataclass

from app.models.retry_policy import RetryPolicy
from app.services.policy_preview import preview_contexts
from app.services.retry_policy import (
    FieldChange,
    PolicyChanges,
    PolicyVersion,
    diff,
    policy_history,
    update_retry_policy,
)
from jobs.policy_preview import Forecast, forecast_change
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


@dataclass(frozen=True)
class Preview:
    """A previewed change: what the engine would re-decide, and the champion's forecast
    (None without a usable champion)."""

    current: RetryPolicy
    proposed: RetryPolicy
    changes: tuple[FieldChange, ...]
    redecided: int
    scored: int
    forecast: Forecast | None


async def preview(ctx: Context, *, merchant_global_id: str, changes: PolicyChanges) -> Preview:
    """Preview a change in a unit of work that is never committed; refusals as for update."""
    principal = ctx.require_principal()
    now = ctx.clock.now()
    async with ctx.db.uow(principal.scope) as uow:  # rolled back on exit: nothing changes
        _, merchant_id = decode_id(merchant_global_id, expected="Merchant")
        found = await preview_contexts(
            uow, principal=principal, merchant_id=merchant_id, changes=changes, now=now
        )
    return Preview(
        current=found.current,
        proposed=found.proposed,
        changes=diff(found.current, found.proposed),
        redecided=found.scheduled,
        scored=len(found.before),
        forecast=await forecast_change(ctx.db, found, now=now),
    )
