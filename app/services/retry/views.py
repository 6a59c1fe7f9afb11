"""Read models of the retry engine for the API: timelines and "why (not) retried" ledgers."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.models.end_action import EndActionRun
from app.models.retry import PaymentTransition
from app.retry.rules import LedgerView, ledger_view
from app.services.retry.ledger import load_contexts


async def transitions_by_payment_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[PaymentTransition]]:
    """Each payment's timeline, oldest first."""
    rows = (
        await session.execute(
            select(PaymentTransition)
            .where(col(PaymentTransition.payment_id).in_(ids))
            .order_by(
                col(PaymentTransition.payment_id),
                col(PaymentTransition.at),
                col(PaymentTransition.seq),
            )
        )
    ).scalars()
    grouped: dict[uuid.UUID, list[PaymentTransition]] = defaultdict(list)
    for row in rows:
        grouped[row.payment_id].append(row)
    return grouped


async def ledger_views(
    session: AsyncSession, ids: Sequence[uuid.UUID], *, now: datetime
) -> dict[uuid.UUID, LedgerView]:
    """Attempts on each payment's card and, as of `now`, its next allowed retry and blocker."""
    contexts = await load_contexts(session, ids, now=now)
    return {
        pid: ledger_view(ledger=ctx.ledger, policy=ctx.policy, now=now)
        for pid, ctx in contexts.items()
    }


async def end_actions_by_payment_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, EndActionRun]:
    """Each payment's end action, for those whose recovery ended with one."""
    rows = await session.execute(select(EndActionRun).where(col(EndActionRun.payment_id).in_(ids)))
    return {r.payment_id: r for r in rows.scalars()}
