"""Outbox events become monthly range partitions by `created_at`, and webhook deliveries by
their event's time, the new `webhook_delivery.event_created_at`.

A partitioned table's keys must contain its partition column, so the outbox's key becomes
(id, created_at), and a delivery refers to its event by that key: `event_created_at` is set
with `event_id` and the foreign key is `(event_id, event_created_at)` to
`outbox_event (id, created_at)`. Deliveries are partitioned by `event_created_at`, which the
foreign key makes the event's own time, a function of `event_id`: the fan-out's
one-delivery-per-event-and-endpoint index becomes `(event_id, endpoint_id, event_created_at)
WHERE redelivery_of IS NULL` and still admits one row per event and endpoint. A month of
deliveries lives beside the month of events it delivers, and goes first.

An index on `(event_id, event_created_at)` serves the foreign key's checks.

Steps, each short or online (each can be run again after an interruption):
1. `event_created_at` is added (nullable: a catalog change), and a `BEFORE INSERT` trigger
   fills it from the event for rows written without it (the previous version's workers);
2. the rows already stored get it in batches of 10,000 deliveries, each committed; then a
   `CHECK (event_created_at IS NOT NULL)` is added `NOT VALID` and validated (a read that
   blocks no writes), so `SET NOT NULL` later skips the scan;
3. the outbox is partitioned as 0024 does (`migrations/partitioning.py`); in the same
   transaction the deliveries' foreign key on `event_id` (which has to go before the outbox's
   key can change) is replaced by the one on `(event_id, event_created_at)`, added `NOT VALID`
   and validated right after the commit, online;
4. the deliveries' key index, new unique index and foreign-key index are built concurrently,
   their bound `CHECK` validated, and the table partitioned likewise; the swap also makes the
   column `NOT NULL` (proved by the validated check), drops the trigger (a partitioned table's
   `BEFORE` trigger cannot set the partition column) and the old unique index.

Workers of the previous version fan out with `ON CONFLICT (event_id, endpoint_id)`, which no
index matches once the swap is done: their fan-out fails (and is retried) until they run this
version; nothing is lost, since a fan-out that fails commits nothing and its events stay
undispatched. Their redeliveries and test events fail likewise (`event_created_at` is null).

Revision ID: 0028_partition_outbox
Revises: 0027_payment_orders
Create Date: 2026-12-06 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from app.models.partitioning import OUTBOX_EVENT, WEBHOOK_DELIVERY
from migrations.locks import short_lock_timeout
from migrations.partitioning import Shape, prepare, swap, unpartition

revision: str = "0028_partition_outbox"
down_revision: str | None = "0027_payment_orders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
OLD_FK = "fk_webhook_delivery_event_id_outbox_event"
FK = "fk_webhook_delivery_event_outbox_event"
FK_DEFINITION = "FOREIGN KEY (event_id, event_created_at) REFERENCES outbox_event (id, created_at)"
NOT_NULL = "ck_webhook_delivery_event_created_at_not_null"
OLD_FIRST = "uq_webhook_delivery_first"
# Built beside the old one, and given its name in the swap.
NEW_FIRST = "uq_webhook_delivery_first_at"
FIRST = "(event_id, endpoint_id, event_created_at) WHERE redelivery_of IS NULL"
EVENT_INDEX = ("ix_webhook_delivery_event", "(event_id, event_created_at)")

OUTBOX = Shape(
    OUTBOX_EVENT,
    indexes=(
        ("ix_outbox_event_dispatched", "(created_at) WHERE dispatched_at IS NOT NULL"),
        ("ix_outbox_event_feed", '(merchant_id, "position") WHERE "position" IS NOT NULL'),
        ("ix_outbox_event_merchant_id", "(merchant_id)"),
        ("ix_outbox_event_payment_id", "(payment_id)"),
        ("ix_outbox_event_pending", "(created_at) WHERE dispatched_at IS NULL"),
        ("ix_outbox_event_unsequenced", '(created_at) WHERE "position" IS NULL'),
    ),
    foreign_keys=(
        ("fk_outbox_event_merchant_id_merchant", "merchant_id", "merchant"),
        ("fk_outbox_event_payment_id_payment", "payment_id", "payment"),
    ),
)

DELIVERIES = Shape(
    WEBHOOK_DELIVERY,
    indexes=(
        ("ix_webhook_delivery_due", "(next_attempt_at) WHERE status::text = 'pending'::text"),
        ("ix_webhook_delivery_endpoint_id", "(endpoint_id)"),
        EVENT_INDEX,
        ("ix_webhook_delivery_finished", "(created_at) WHERE status::text <> 'pending'::text"),
        ("ix_webhook_delivery_merchant_id", "(merchant_id)"),
    ),
    unique_indexes=((OLD_FIRST, FIRST),),
    foreign_keys=(
        (
            "fk_webhook_delivery_endpoint_id_webhook_endpoint",
            "endpoint_id",
            "webhook_endpoint",
        ),
        ("fk_webhook_delivery_merchant_id_merchant", "merchant_id", "merchant"),
    ),
    constraints=((FK, FK_DEFINITION),),
)

_FILL = """
CREATE OR REPLACE FUNCTION webhook_delivery_event_created_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_created_at IS NULL THEN
        SELECT created_at INTO NEW.event_created_at FROM outbox_event WHERE id = NEW.event_id;
    END IF;
    RETURN NEW;
END $$
"""

_TRIGGER = (
    "CREATE OR REPLACE TRIGGER webhook_delivery_event_created_at BEFORE INSERT "
    "ON webhook_delivery FOR EACH ROW EXECUTE FUNCTION webhook_delivery_event_created_at()"
)

_BACKFILL = """
CREATE OR REPLACE PROCEDURE webhook_delivery_event_created_at_backfill() LANGUAGE plpgsql AS $$
DECLARE
    last uuid := '00000000-0000-0000-0000-000000000000';
    batch uuid;
BEGIN
    LOOP
        -- The 10,000th id after the last batch; none: the rest is the last batch.
        SELECT id INTO batch FROM webhook_delivery WHERE id > last ORDER BY id
        OFFSET 9999 LIMIT 1;
        UPDATE webhook_delivery AS d SET event_created_at = e.created_at
        FROM outbox_event AS e
        WHERE e.id = d.event_id AND d.event_created_at IS NULL
            AND d.id > last AND (batch IS NULL OR d.id <= batch);
        COMMIT;
        EXIT WHEN batch IS NULL;
        last := batch;
    END LOOP;
END $$
"""


def _build(name: str, definition: str, *, unique: bool = False) -> None:
    """A concurrent build, dropped first: an interrupted one leaves an invalid index."""
    op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    kind = "UNIQUE INDEX" if unique else "INDEX"
    op.execute(f"CREATE {kind} CONCURRENTLY {name} ON webhook_delivery {definition}")


def upgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(
            "ALTER TABLE webhook_delivery ADD COLUMN IF NOT EXISTS event_created_at timestamptz"
        )
        op.execute(_FILL)
        op.execute(_TRIGGER)
    with op.get_context().autocommit_block():
        op.execute(_BACKFILL)
        op.execute("CALL webhook_delivery_event_created_at_backfill()")
        op.execute("DROP PROCEDURE IF EXISTS webhook_delivery_event_created_at_backfill()")
        with short_lock_timeout(LOCK_TIMEOUT, in_transaction=False):
            op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS {NOT_NULL}")
            op.execute(
                f"ALTER TABLE webhook_delivery ADD CONSTRAINT {NOT_NULL} "
                "CHECK (event_created_at IS NOT NULL) NOT VALID"
            )
            op.execute(f"ALTER TABLE webhook_delivery VALIDATE CONSTRAINT {NOT_NULL}")
        prepare(OUTBOX)
    with short_lock_timeout(LOCK_TIMEOUT):
        # It depends on the outbox's key on id, which the swap replaces.
        op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS {OLD_FK}")
    swap(OUTBOX)
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(f"ALTER TABLE webhook_delivery ADD CONSTRAINT {FK} {FK_DEFINITION} NOT VALID")
    with op.get_context().autocommit_block():
        with short_lock_timeout(LOCK_TIMEOUT, in_transaction=False):
            op.execute(f"ALTER TABLE webhook_delivery VALIDATE CONSTRAINT {FK}")
        _build(*EVENT_INDEX)
        _build(NEW_FIRST, FIRST, unique=True)
        prepare(DELIVERIES)
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute("ALTER TABLE webhook_delivery ALTER COLUMN event_created_at SET NOT NULL")
        op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT {NOT_NULL}")
        op.execute("DROP TRIGGER webhook_delivery_event_created_at ON webhook_delivery")
        op.execute("DROP FUNCTION webhook_delivery_event_created_at()")
        op.execute(f"DROP INDEX {OLD_FIRST}")
        op.execute(f"ALTER INDEX {NEW_FIRST} RENAME TO {OLD_FIRST}")
    swap(DELIVERIES)


def downgrade() -> None:
    unpartition(DELIVERIES)
    op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT {FK}")
    unpartition(OUTBOX)
    op.execute(f"DROP INDEX {EVENT_INDEX[0]}")
    op.execute(f"DROP INDEX {OLD_FIRST}")
    op.execute(
        f"CREATE UNIQUE INDEX {OLD_FIRST} ON webhook_delivery (event_id, endpoint_id) "
        "WHERE redelivery_of IS NULL"
    )
    op.execute(
        f"ALTER TABLE webhook_delivery ADD CONSTRAINT {OLD_FK} FOREIGN KEY (event_id) "
        "REFERENCES outbox_event (id)"
    )
    op.execute("ALTER TABLE webhook_delivery DROP COLUMN event_created_at")
