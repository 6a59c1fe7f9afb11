"""Outbox events become monthly range partitions by `created_at`; webhook deliveries get their
event's time, `webhook_delivery.event_created_at`, and refer to the event by (id, created_at).

A partitioned table's keys must contain its partition column, so the outbox's key becomes
(id, created_at), and a delivery refers to its event by that key: `event_created_at` is set
with `event_id` and the foreign key becomes `(event_id, event_created_at)` to
`outbox_event (id, created_at)`, which makes `event_created_at` the event's own time, a
function of `event_id`. Revision 0029 then partitions the deliveries by it.

Steps, each short or online; all but the last can be run again after an interruption, and the
last commits with the revision:
1. `event_created_at` is added (nullable: a catalog change), and a `BEFORE INSERT` trigger
   fills it from the event for rows written without it (the previous version's workers);
2. the rows already stored get it in batches of 10,000 deliveries, each committed; then a
   `CHECK (event_created_at IS NOT NULL)` is added `NOT VALID` and validated (a read that
   blocks no writes), so that 0029's `SET NOT NULL` skips the scan;
3. the outbox's key index on (id, created_at) is built concurrently and its bound `CHECK`
   validated, and the outbox is partitioned as 0024 does (`migrations/partitioning.py`); in
   the same transaction the deliveries' foreign key on `event_id` (which has to go before the
   outbox's key can change) is replaced by the one on `(event_id, event_created_at)`, added
   `NOT VALID` (0029 validates it, online).

The event feed (`position`, `version`, their sequence and partial indexes) is unchanged: the
feed's index becomes one per partition, read through the partitioned index of the same name.

Revision ID: 0028_partition_outbox
Revises: 0027_payment_orders
Create Date: 2026-12-06 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from app.models.partitioning import OUTBOX_EVENT
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

FILL = """
CREATE OR REPLACE FUNCTION webhook_delivery_event_created_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_created_at IS NULL THEN
        SELECT created_at INTO NEW.event_created_at FROM outbox_event WHERE id = NEW.event_id;
    END IF;
    RETURN NEW;
END $$
"""

TRIGGER = (
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


def upgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(
            "ALTER TABLE webhook_delivery ADD COLUMN IF NOT EXISTS event_created_at timestamptz"
        )
        op.execute(FILL)
        op.execute(TRIGGER)
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
        # Both tables, in the order the application's transactions take them (an event, then
        # its deliveries): taken one at a time by the statements below, the deliveries first,
        # they could deadlock with a transaction that wrote an event and waits to write its
        # delivery.
        op.execute("LOCK TABLE outbox_event, webhook_delivery IN ACCESS EXCLUSIVE MODE")
        # It depends on the outbox's key on id, which the swap replaces.
        op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT {OLD_FK}")
    swap(OUTBOX)
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(f"ALTER TABLE webhook_delivery ADD CONSTRAINT {FK} {FK_DEFINITION} NOT VALID")


def downgrade() -> None:
    op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT {FK}")
    unpartition(OUTBOX)
    op.execute(
        f"ALTER TABLE webhook_delivery ADD CONSTRAINT {OLD_FK} FOREIGN KEY (event_id) "
        "REFERENCES outbox_event (id)"
    )
    op.execute("DROP TRIGGER webhook_delivery_event_created_at ON webhook_delivery")
    op.execute("DROP FUNCTION webhook_delivery_event_created_at()")
    op.execute("ALTER TABLE webhook_delivery DROP COLUMN event_created_at")
