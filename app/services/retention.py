"""Pruning history that has served its purpose: outbox events and webhook deliveries.

An outbox event is kept while it waits to be fanned out and while any delivery of it is
pending; a finished delivery (delivered or given up) is kept for the delivery retention window,
so a merchant can see and redeliver it. Both windows are settings (0 keeps everything). Raw
processor records, attempts and timelines are history the portal replays and shows: they are
never pruned here.

Rows go in batches, each in its own short transaction, oldest first through partial indexes on
`created_at`, so pruning never holds locks for long nor competes with the work that adds rows.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, exists, select
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


async def _delete_rows(
    db: Database, table: type[OutboxEvent] | type[WebhookDelivery], ids: Select[Any]
) -> int:
    """Delete the rows whose ids `ids` selects, in a transaction of its own."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        result = await uow.session.execute(delete(table).where(col(table.id).in_(ids)))
        await uow.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


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
    return await _delete_rows(db, WebhookDelivery, oldest)


async def _delete_events(db: Database, cutoff: datetime, limit: int) -> int:
    delivery = select(col(WebhookDelivery.id)).where(
        col(WebhookDelivery.event_id) == col(OutboxEvent.id),
        col(WebhookDelivery.event_created_at) == col(OutboxEvent.created_at),
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
    return await _delete_rows(db, OutboxEvent, oldest)


async def _in_batches(
    delete_batch: Callable[[Database, datetime, int], Awaitable[int]],
    db: Database,
    now: datetime,
    days: int,
    max_batches: int,
    batch: int,
) -> int:
    """Batches of `delete_batch` until one comes back short; nothing when `days` is 0."""
    if days <= 0:
        return 0
    cutoff, deleted = now - timedelta(days=days), 0
    for _ in range(max_batches):
        done = await delete_batch(db, cutoff, batch)
        deleted += done
        if done < batch:
            break
    return deleted


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
    deliveries = await _in_batches(_delete_deliveries, db, now, delivery_days, max_batches, batch)
    events = await _in_batches(_delete_events, db, now, outbox_days, max_batches, batch)
    return Pruned(deliveries=deliveries, events=events)


__all__ = ["Pruned", "prune_history"]
