"""Pruning history that has served its purpose: outbox events and webhook deliveries.

An outbox event is kept while it waits to be fanned out and while any delivery of it is
pending; a finished delivery (delivered or given up) is kept for the delivery retention window,
so a merchant can see and redeliver it. Both windows are settings (0 keeps everything). Raw
processor records, attempts and timelines are history the portal replays and shows: they are
never pruned here.

Rows go in batches, each in its own short transaction, oldest first through partial indexes on
`created_at`, so pruning never holds locks for long nor competes with the work that adds rows.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select
from sqlmodel import col

from app.db import Database
from app.enums import WebhookDeliveryStatus
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery
from app.tenancy import SYSTEM_SCOPE

BATCH = 2_000


@dataclass(frozen=True)
class Pruned:
    deliveries: int
    events: int


async def _delete_deliveries(db: Database, cutoff: datetime, limit: int) -> int:
    oldest = (
        select(col(WebhookDelivery.id))
        .where(
            col(WebhookDelivery.status) != WebhookDeliveryStatus.PENDING,
            col(WebhookDelivery.created_at) < cutoff,
        )
        .order_by(col(WebhookDelivery.created_at))
        .limit(limit)
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        result = await uow.session.execute(
            delete(WebhookDelivery).where(col(WebhookDelivery.id).in_(oldest))
        )
        await uow.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _delete_events(db: Database, cutoff: datetime, limit: int) -> int:
    delivery = select(col(WebhookDelivery.id)).where(
        col(WebhookDelivery.event_id) == col(OutboxEvent.id)
    )
    oldest = (
        select(col(OutboxEvent.id))
        .where(
            col(OutboxEvent.dispatched_at).is_not(None),
            col(OutboxEvent.created_at) < cutoff,
            ~exists(delivery),
        )
        .order_by(col(OutboxEvent.created_at))
        .limit(limit)
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        result = await uow.session.execute(
            delete(OutboxEvent).where(col(OutboxEvent.id).in_(oldest))
        )
        await uow.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def prune_history(
    db: Database,
    *,
    now: datetime,
    outbox_days: int,
    delivery_days: int,
    max_batches: int = 50,
    batch: int = BATCH,
) -> Pruned:
    """Delete finished deliveries, then fanned-out events without deliveries left, each older
    than its window; at most `max_batches` batches of each per call (the cron comes back)."""
    deliveries = events = 0
    if delivery_days > 0:
        cutoff = now - timedelta(days=delivery_days)
        for _ in range(max_batches):
            done = await _delete_deliveries(db, cutoff, batch)
            deliveries += done
            if done < batch:
                break
    if outbox_days > 0:
        cutoff = now - timedelta(days=outbox_days)
        for _ in range(max_batches):
            done = await _delete_events(db, cutoff, batch)
            events += done
            if done < batch:
                break
    return Pruned(deliveries=deliveries, events=events)


__all__ = ["Pruned", "prune_history"]
