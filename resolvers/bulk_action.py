"""Support's bulk actions for the API: submit (or count), queue the job, read progress."""

import uuid

from app.models.bulk_action import BulkAction
from app.services.bulk_action import Submitted, submit_cancel, submit_pause
from app.services.payment import PaymentFilter
from jobs.enqueue import enqueue_bulk_action
from resolvers.context import Context
from resolvers.ids import decode_id


def _merchant_ids(global_ids: list[str]) -> list[uuid.UUID]:
    return [decode_id(g, expected="Merchant")[1] for g in global_ids]


async def _queue(ctx: Context, submitted: Submitted) -> Submitted:
    """Queue the action's job after its row committed. Queued again for a resubmission of an
    action not finished (its job id deduplicates), so one whose job was lost still runs."""
    action = submitted.action
    if action is not None and not action.status.is_finished:
        await enqueue_bulk_action(ctx.job_queue(), action.id)
    return submitted


async def cancel_recoveries(
    ctx: Context,
    *,
    filters: PaymentFilter,
    merchant_global_ids: list[str] | None,
    reason: str,
    dry_run: bool,
    client_mutation_id: str | None,
) -> Submitted:
    async with ctx.change() as (uow, by):
        by["principal"].require_support("cancel payments' recovery in bulk")
        merchant_ids = None if merchant_global_ids is None else _merchant_ids(merchant_global_ids)
        submitted = await submit_cancel(
            uow,
            filters=filters,
            merchant_ids=merchant_ids,
            reason=reason,
            dry_run=dry_run,
            client_mutation_id=client_mutation_id,
            **by,
        )
    return await _queue(ctx, submitted)


async def pause_merchants(
    ctx: Context,
    *,
    merchant_global_ids: list[str],
    reason: str,
    dry_run: bool,
    client_mutation_id: str | None,
) -> Submitted:
    async with ctx.change() as (uow, by):
        by["principal"].require_support("pause merchants' recovery in bulk")
        submitted = await submit_pause(
            uow,
            merchant_ids=_merchant_ids(merchant_global_ids),
            reason=reason,
            dry_run=dry_run,
            client_mutation_id=client_mutation_id,
            **by,
        )
    return await _queue(ctx, submitted)


async def by_id(ctx: Context, action_id: uuid.UUID) -> BulkAction | None:
    return await ctx.loaders.bulk_action_by_id.load(action_id)
