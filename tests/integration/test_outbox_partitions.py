"""Outbox events and webhook deliveries in monthly partitions: a delivery lives in its event's
month; events waiting in the default partition move into their month with their deliveries;
a month past its window goes, deliveries first, unless something still holds it."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.enums import WebhookDeliveryStatus
from app.models.partitioning import OUTBOX_EVENT, WEBHOOK_DELIVERY, Partitioned
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.services.partitions import ensure_partitions, expire_partitions, partitions
from app.services.retention import prune_history
from app.tenancy import SYSTEM_SCOPE
from tests.support.factories import make_merchant

NOW = datetime(2031, 1, 15, 9, 30, tzinfo=UTC)
WINDOWS = {OUTBOX_EVENT.table: 30, WEBHOOK_DELIVERY.table: 30}


class _Merchant:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.merchant_id = uuid.uuid4()
        self.endpoint_id = uuid.uuid4()

    async def start(self, now: datetime) -> "_Merchant":
        merchant = await make_merchant(self.db, f"Outbox {uuid.uuid4().hex[:6]}", now=now)
        self.merchant_id = merchant.id
        async with self.db.uow(SYSTEM_SCOPE) as uow:
            uow.session.add(
                WebhookEndpoint(
                    id=self.endpoint_id,
                    merchant_id=merchant.id,
                    url="https://m.example/hooks",
                    secret_encrypted=b"\x01",
                    created_at=now,
                )
            )
            await uow.commit()
        return self

    async def event(
        self,
        at: datetime,
        *,
        status: WebhookDeliveryStatus | None = WebhookDeliveryStatus.DELIVERED,
        sent_at: datetime | None = None,
    ) -> tuple[uuid.UUID, uuid.UUID | None]:
        """An event fanned out at `at`, with one delivery in `status` queued at `sent_at` (or
        `at`); none when `status` is None."""
        async with self.db.uow(SYSTEM_SCOPE) as uow:
            event = OutboxEvent(
                merchant_id=self.merchant_id,
                event_type="payment.recovered",
                payload={},
                created_at=at,
                dispatched_at=at,
            )
            uow.session.add(event)
            await uow.session.flush()
            delivery = None
            if status is not None:
                delivery = WebhookDelivery(
                    merchant_id=self.merchant_id,
                    event_id=event.id,
                    event_created_at=event.created_at,
                    endpoint_id=self.endpoint_id,
                    status=status,
                    next_attempt_at=sent_at or at,
                    created_at=sent_at or at,
                )
                uow.session.add(delivery)
            await uow.commit()
        return event.id, delivery.id if delivery else None


async def _where(db: Database, table: Partitioned, row_id: uuid.UUID) -> str | None:
    async with db.session(SYSTEM_SCOPE) as s:
        found = await s.scalar(
            # The table's name is one of app.models.partitioning's constants.
            text(f"SELECT tableoid::regclass::text FROM {table.table} WHERE id = :i"),  # noqa: S608
            {"i": row_id},
        )
    return None if found is None else str(found)


async def _names(db: Database, table: Partitioned) -> set[str]:
    async with db.session(SYSTEM_SCOPE) as s:
        return {p.name for p in await partitions(s, table)}


async def test_an_event_waiting_in_the_default_partition_moves_with_its_delivery(
    db: Database,
) -> None:
    shop = await _Merchant(db).start(NOW)
    event, delivery = await shop.event(datetime(2033, 6, 3, tzinfo=UTC))
    assert delivery is not None
    assert await _where(db, OUTBOX_EVENT, event) == "outbox_event_default"
    assert await _where(db, WEBHOOK_DELIVERY, delivery) == "webhook_delivery_default"

    created = await ensure_partitions(db, now=datetime(2033, 6, 1, tzinfo=UTC), months_ahead=0)

    moved = {c.partition: c.moved for c in created}
    assert moved["outbox_event_p203306"] == 1
    assert moved["webhook_delivery_p203306"] == 1
    assert await _where(db, OUTBOX_EVENT, event) == "outbox_event_p203306"
    assert await _where(db, WEBHOOK_DELIVERY, delivery) == "webhook_delivery_p203306"


async def test_one_delivery_per_event_and_endpoint_holds_across_partitions(db: Database) -> None:
    await ensure_partitions(db, now=NOW, months_ahead=1)
    shop = await _Merchant(db).start(NOW)
    event, first = await shop.event(datetime(2031, 1, 20, tzinfo=UTC))
    assert first is not None

    def again(redelivery_of: uuid.UUID | None) -> WebhookDelivery:
        return WebhookDelivery(
            merchant_id=shop.merchant_id,
            event_id=event,
            event_created_at=datetime(2031, 1, 20, tzinfo=UTC),
            endpoint_id=shop.endpoint_id,
            next_attempt_at=NOW,
            created_at=NOW,
            redelivery_of=redelivery_of,
        )

    async def add(row: WebhookDelivery) -> None:
        async with db.uow(SYSTEM_SCOPE) as uow:
            uow.session.add(row)
            await uow.commit()

    # A redelivery is a further row; a second first delivery is refused.
    await add(again(first))
    with pytest.raises(IntegrityError, match="duplicate key"):
        await add(again(None))
    # A delivery cannot claim another time than its event's: the foreign key refuses it.
    elsewhen = again(None)
    elsewhen.event_created_at = datetime(2031, 2, 2, tzinfo=UTC)
    with pytest.raises(IntegrityError, match="violates foreign key"):
        await add(elsewhen)


async def test_a_month_of_deliveries_then_its_events_are_archived_and_dropped(
    db: Database, tmp_path: Path
) -> None:
    await ensure_partitions(db, now=NOW, months_ahead=2)
    shop = await _Merchant(db).start(NOW)
    january = [await shop.event(datetime(2031, 1, d, tzinfo=UTC)) for d in (3, 31)]
    february = await shop.event(datetime(2031, 2, 20, tzinfo=UTC))

    # 30 days before 15 March is 13 February: January has ended before it, February has not.
    archived = await expire_partitions(
        db, now=datetime(2031, 3, 15, tzinfo=UTC), retention_days=WINDOWS, archive_dir=tmp_path
    )

    rows = {a.partition: a.rows for a in archived}
    # (The empty months the migration made, years before, go too.)
    assert (rows["webhook_delivery_p203101"], rows["outbox_event_p203101"]) == (2, 2)
    assert not {"webhook_delivery_p203102", "outbox_event_p203102"} & set(rows)
    assert "outbox_event_p203101" not in await _names(db, OUTBOX_EVENT)
    assert "webhook_delivery_p203101" not in await _names(db, WEBHOOK_DELIVERY)
    for event, delivery in january:
        assert delivery is not None
        assert await _where(db, OUTBOX_EVENT, event) is None
        assert await _where(db, WEBHOOK_DELIVERY, delivery) is None
    assert await _where(db, OUTBOX_EVENT, february[0]) == "outbox_event_p203102"
    assert (tmp_path / "outbox_event" / "outbox_event_p203101.csv.gz").exists()


@pytest.mark.parametrize(
    ("status", "sent_at"),
    [
        # Still being sent.
        (WebhookDeliveryStatus.PENDING, None),
        # A redelivery queued within the window: it lives in its event's month.
        (WebhookDeliveryStatus.DELIVERED, datetime(2031, 3, 1, tzinfo=UTC)),
    ],
    ids=["pending", "recent-redelivery"],
)
async def test_a_month_of_deliveries_something_holds_is_kept_and_so_are_its_events(
    db: Database, tmp_path: Path, status: WebhookDeliveryStatus, sent_at: datetime | None
) -> None:
    await ensure_partitions(db, now=NOW, months_ahead=2)
    shop = await _Merchant(db).start(NOW)
    await shop.event(datetime(2031, 1, 3, tzinfo=UTC))
    event, delivery = await shop.event(
        datetime(2031, 1, 9, tzinfo=UTC), status=status, sent_at=sent_at
    )
    assert delivery is not None

    archived = await expire_partitions(
        db, now=datetime(2031, 3, 15, tzinfo=UTC), retention_days=WINDOWS, archive_dir=tmp_path
    )

    assert not {a.partition for a in archived} & {
        "webhook_delivery_p203101",
        "outbox_event_p203101",
    }
    assert await _where(db, WEBHOOK_DELIVERY, delivery) == "webhook_delivery_p203101"
    assert await _where(db, OUTBOX_EVENT, event) == "outbox_event_p203101"


async def test_a_month_of_events_not_all_fanned_out_is_kept_though_its_deliveries_go(
    db: Database, tmp_path: Path
) -> None:
    await ensure_partitions(db, now=NOW, months_ahead=2)
    shop = await _Merchant(db).start(NOW)
    sent, delivery = await shop.event(datetime(2031, 1, 3, tzinfo=UTC))
    async with db.uow(SYSTEM_SCOPE) as uow:
        waiting = OutboxEvent(
            merchant_id=shop.merchant_id,
            event_type="payment.scheduled",
            payload={},
            created_at=datetime(2031, 1, 5, tzinfo=UTC),
        )
        uow.session.add(waiting)
        await uow.commit()

    archived = await expire_partitions(
        db,
        now=datetime(2031, 3, 15, tzinfo=UTC),
        retention_days=WINDOWS,
        archive_dir=tmp_path,
    )

    gone = {a.partition for a in archived}
    assert "webhook_delivery_p203101" in gone
    assert "outbox_event_p203101" not in gone
    assert await _where(db, OUTBOX_EVENT, waiting.id) == "outbox_event_p203101"
    assert await _where(db, OUTBOX_EVENT, sent) == "outbox_event_p203101"
    assert delivery is not None
    assert await _where(db, WEBHOOK_DELIVERY, delivery) is None


async def test_the_batch_prune_still_takes_what_a_month_does_not_cover(db: Database) -> None:
    """Rows no month's drop covers (here the default partition's) go row by row, as before."""
    await ensure_partitions(db, now=NOW, months_ahead=1)
    shop = await _Merchant(db).start(NOW)
    event, delivery = await shop.event(NOW - timedelta(days=40))
    assert delivery is not None

    pruned = await prune_history(db, now=NOW, outbox_days=30, delivery_days=30)

    assert (pruned.deliveries, pruned.events) == (1, 1)
    assert await _where(db, OUTBOX_EVENT, event) is None
