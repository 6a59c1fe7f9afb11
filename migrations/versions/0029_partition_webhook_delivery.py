"""Webhook deliveries become monthly range partitions by their event's time,
`event_created_at` (filled and proved non-null by 0028).

The foreign key `(event_id, event_created_at)` to the outbox makes `event_created_at` a
function of `event_id`, so the fan-out's one-delivery-per-event-and-endpoint index can take the
partition column without loosening the rule: it becomes `(event_id, endpoint_id,
event_created_at) WHERE redelivery_of IS NULL` and still admits one row per event and
endpoint (redeliveries, `redelivery_of` set, are further rows). A delivery lives in the month
of the event it delivers, however late it is sent, so a month of deliveries can go before the
month of events it refers to. An index on `(event_id, event_created_at)` serves the foreign
key's checks (the unique index is partial).

Steps, online, each can be run again; the last commits with the revision:
1. the foreign key 0028 added `NOT VALID` is validated (a read that blocks no writes);
2. the key index on (id, event_created_at), the new unique index and the foreign key's index
   are built concurrently, and the bound `CHECK` validated (`migrations/partitioning.py`);
3. one short transaction makes the column `NOT NULL` (proved by 0028's validated check, no
   scan), drops that check, the filling trigger (a partitioned table's `BEFORE` trigger cannot
   set the partition column: the application sets it) and the old unique index, gives the new
   one its name, and partitions the table as 0024 does. The partition's foreign key to the
   outbox is adopted as it is, validated.

Workers of the previous version fan out with `ON CONFLICT (event_id, endpoint_id)`, which no
index matches after this revision: their fan-out fails (and is retried) until they run this
version; nothing is lost, since a fan-out that fails commits nothing and its events stay
undispatched. Their redeliveries and test events are refused likewise (`event_created_at` is
null).

Revision ID: 0029_partition_webhook_delivery
Revises: 0028_partition_outbox
Create Date: 2026-12-06 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from app.models.partitioning import WEBHOOK_DELIVERY
from migrations.locks import short_lock_timeout
from migrations.partitioning import Shape, prepare, swap, unpartition

revision: str = "0029_partition_webhook_delivery"
down_revision: str | None = "0028_partition_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
FK = "fk_webhook_delivery_event_outbox_event"
FK_DEFINITION = "FOREIGN KEY (event_id, event_created_at) REFERENCES outbox_event (id, created_at)"
NOT_NULL = "ck_webhook_delivery_event_created_at_not_null"
FIRST = "uq_webhook_delivery_first"
# Built beside the old one, and given its name in the swap.
NEW_FIRST = "uq_webhook_delivery_first_at"
FIRST_DEFINITION = "(event_id, endpoint_id, event_created_at) WHERE redelivery_of IS NULL"
OLD_FIRST_DEFINITION = "(event_id, endpoint_id) WHERE redelivery_of IS NULL"
EVENT_INDEX = ("ix_webhook_delivery_event", "(event_id, event_created_at)")

DELIVERIES = Shape(
    WEBHOOK_DELIVERY,
    indexes=(
        ("ix_webhook_delivery_due", "(next_attempt_at) WHERE status::text = 'pending'::text"),
        ("ix_webhook_delivery_endpoint_id", "(endpoint_id)"),
        EVENT_INDEX,
        ("ix_webhook_delivery_finished", "(created_at) WHERE status::text <> 'pending'::text"),
        ("ix_webhook_delivery_merchant_id", "(merchant_id)"),
    ),
    unique_indexes=((FIRST, FIRST_DEFINITION),),
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

# As 0028 created them: what the downgrade gives back.
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


def _build(name: str, definition: str, *, unique: bool = False) -> None:
    """A concurrent build, dropped first: an interrupted one leaves an invalid index."""
    op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    kind = "UNIQUE INDEX" if unique else "INDEX"
    op.execute(f"CREATE {kind} CONCURRENTLY {name} ON webhook_delivery {definition}")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        with short_lock_timeout(LOCK_TIMEOUT, in_transaction=False):
            op.execute(f"ALTER TABLE webhook_delivery VALIDATE CONSTRAINT {FK}")
        _build(*EVENT_INDEX)
        _build(NEW_FIRST, FIRST_DEFINITION, unique=True)
        prepare(DELIVERIES)
    with short_lock_timeout(LOCK_TIMEOUT):
        # The outbox first, as the application's transactions take it (an event, then its
        # deliveries): the swap's foreign key needs it, and taking it after the deliveries
        # could deadlock with a transaction that wrote an event and waits to write its
        # delivery. SHARE ROW EXCLUSIVE holds new events for the swap's instant, not reads.
        op.execute("LOCK TABLE outbox_event IN SHARE ROW EXCLUSIVE MODE")
        op.execute("ALTER TABLE webhook_delivery ALTER COLUMN event_created_at SET NOT NULL")
        op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT {NOT_NULL}")
        op.execute("DROP TRIGGER webhook_delivery_event_created_at ON webhook_delivery")
        op.execute("DROP FUNCTION webhook_delivery_event_created_at()")
        op.execute(f"DROP INDEX {FIRST}")
        op.execute(f"ALTER INDEX {NEW_FIRST} RENAME TO {FIRST}")
    swap(DELIVERIES)


def downgrade() -> None:
    # The key to the (partitioned) outbox is dropped before the detach and added back after:
    # the embedded server, PostgreSQL 16.2, fails to detach a partition that inherited a foreign
    # key to a partitioned table ("could not find ON INSERT check triggers").
    op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT {FK}")
    unpartition(DELIVERIES)
    op.execute(f"ALTER TABLE webhook_delivery ADD CONSTRAINT {FK} {FK_DEFINITION}")
    op.execute(f"DROP INDEX {EVENT_INDEX[0]}")
    op.execute(f"DROP INDEX {FIRST}")
    op.execute(f"CREATE UNIQUE INDEX {FIRST} ON webhook_delivery {OLD_FIRST_DEFINITION}")
    op.execute("ALTER TABLE webhook_delivery ALTER COLUMN event_created_at DROP NOT NULL")
    op.execute(
        f"ALTER TABLE webhook_delivery ADD CONSTRAINT {NOT_NULL} "
        "CHECK (event_created_at IS NOT NULL)"
    )
    op.execute(_FILL)
    op.execute(_TRIGGER)
