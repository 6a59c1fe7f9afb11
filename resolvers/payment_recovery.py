"""Reading a payment's recovery (timeline, ledger, end action) and the cancel / retry-now
actions."""

import uuid

from app.models.end_action import EndActionRun
from app.models.retry import PaymentTransition
from app.retry.rules import LedgerView
from app.services.retry.manual import ManualResult, cancel_recovery, retry_now
from resolvers.context import Context
from resolvers.ids import decode_id


async def timeline(ctx: Context, payment_id: uuid.UUID) -> list[PaymentTransition]:
    return await ctx.loaders.retry.transitions_by_payment_id.load(payment_id)


async def end_action(ctx: Context, payment_id: uuid.UUID) -> EndActionRun | None:
    return await ctx.loaders.retry.end_action_by_payment_id.load(payment_id)


async def ledger(ctx: Context, payment_id: uuid.UUID) -> LedgerView | None:
    return await ctx.loaders.retry.ledger_by_payment_id.load((payment_id, ctx.clock.now()))


async def cancel(ctx: Context, *, payment_global_id: str, reason: str) -> ManualResult:
    """Cancel one payment's recovery in its own unit of work; raises domain errors."""
    async with ctx.change() as (uow, by):
        _, payment_id = decode_id(payment_global_id, expected="Payment")
        return await cancel_recovery(uow, payment_id=payment_id, reason=reason, **by)


async def retry(ctx: Context, *, payment_global_id: str, reason: str) -> ManualResult:
    """Schedule one payment's next retry for now (rules permitting); raises domain errors."""
    async with ctx.change() as (uow, by):
        _, payment_id = decode_id(payment_global_id, expected="Payment")
        return await retry_now(uow, payment_id=payment_id, reason=reason, **by)
