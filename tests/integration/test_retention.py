"""Retention: fanned-out events and finished deliveries older than their window go, in
batches; anything still waiting, anything recent, and every other table stay."""

import uuid
from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.enums import WebhookDeliveryStatus
from app.models.merchant import Merchant
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery
from app.services.retention import prune_history
from app.services.webhook_endpoint import create_endpoint
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.urls import UrlPolicy
from tests.support.factories import make_merchant
from tests.support.webhooks import queue_delivery

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
OLD = timedelta(days=45)


async def _ids(db: Database) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    async with db.session(SYSTEM_SCOPE) as s:
        deliveries = set((await s.execute(select(col(WebhookDelivery.id)))).scalars())
        events = set((await s.execute(select(col(OutboxEvent.id)))).scalars())
    return deliveries, events


async def _event_of(db: Database, delivery_id: uuid.UUID) -> uuid.UUID:
    async with db.session(SYSTEM_SCOPE) as s:
        event_id = await s.scalar(
            select(col(WebhookDelivery.event_id)).where(col(WebhookDelivery.id) == delivery_id)
        )
        assert event_id is not None
        return event_id


async def _endpoint(db: Database, settings: Settings) -> tuple[Merchant, uuid.UUID]:
    merchant = await make_merchant(db, f"Retention {uuid.uuid4().hex[:6]}", now=NOW - OLD * 2)
    async with db.uow(SYSTEM_SCOPE) as uow:
        endpoint = await create_endpoint(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            url="http://127.0.0.1:9/hooks",
            secret="whsec_" + "r" * 32,
            box=CredentialBox(settings.secret_key.get_secret_value()),
            policy=UrlPolicy(require_https=False, allow_loopback=True),
            now=NOW - OLD * 2,
        )
        await uow.commit()
    return merchant, endpoint.id


async def test_prunes_only_what_has_served_its_purpose(db: Database, settings: Settings) -> None:
    clock = FixedClock(NOW)
    merchant, endpoint_id = await _endpoint(db, settings)

    async def queue(age: timedelta, status: WebhookDeliveryStatus) -> uuid.UUID:
        return await queue_delivery(
            db,
            merchant,
            endpoint_id,
            clock,
            event_type="payment.recovered",
            age=age,
            status=status,
        )

    old_delivered = [await queue(OLD, WebhookDeliveryStatus.DELIVERED) for _ in range(5)]
    old_failed = await queue(OLD, WebhookDeliveryStatus.FAILED)
    old_pending = await queue(OLD, WebhookDeliveryStatus.PENDING)
    recent = await queue(timedelta(days=3), WebhookDeliveryStatus.DELIVERED)
    async with db.uow(SYSTEM_SCOPE) as uow:
        # Old, but not fanned out yet (the dispatcher was down): kept.
        waiting = OutboxEvent(
            merchant_id=merchant.id,
            event_type="payment.scheduled",
            payload={},
            created_at=NOW - OLD,
        )
        uow.session.add(waiting)
        await uow.commit()
    kept_events = {await _event_of(db, d) for d in (old_pending, recent)} | {waiting.id}
    gone_events = {await _event_of(db, d) for d in [*old_delivered, old_failed]}
    before_deliveries, before_events = await _ids(db)

    pruned = await prune_history(db, now=NOW, outbox_days=30, delivery_days=30, batch=2)

    deliveries, events = await _ids(db)
    assert pruned.deliveries == 6
    assert pruned.events == 6
    assert deliveries == before_deliveries - {*old_delivered, old_failed}
    assert {old_pending, recent} <= deliveries
    assert events == before_events - gone_events
    assert kept_events <= events
    again = await prune_history(db, now=NOW, outbox_days=30, delivery_days=30)
    assert (again.deliveries, again.events) == (0, 0)


async def test_a_window_of_zero_keeps_everything(db: Database, settings: Settings) -> None:
    merchant, endpoint_id = await _endpoint(db, settings)
    await queue_delivery(
        db,
        merchant,
        endpoint_id,
        FixedClock(NOW),
        event_type="payment.recovered",
        age=OLD,
        status=WebhookDeliveryStatus.DELIVERED,
    )
    before = await _ids(db)
    assert before[0]
    assert before[1]
    far_future = NOW + timedelta(days=3650)
    pruned = await prune_history(db, now=far_future, outbox_days=0, delivery_days=0)
    assert (pruned.deliveries, pruned.events) == (0, 0)
    assert await _ids(db) == before
