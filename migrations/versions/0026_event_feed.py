"""The event feed: outbox events get a commit-ordered position and their payload's version.

- `outbox_event.position` (bigint, null until given): an event's place in its merchant's feed,
  taken from the new sequence `outbox_event_position_seq` after the event committed, by one
  sequencer at a time (see docs/events.md for why not at insert);
- `outbox_event.version` (smallint, default 1): the version of the type's payload schema;
- `ix_outbox_event_feed` on `(merchant_id, position) WHERE position IS NOT NULL`: the feed's
  keyset pages;
- `ix_outbox_event_unsequenced` on `created_at WHERE position IS NULL`: the sequencer's queue.

Adding a nullable column, and one with a constant default, changes only the catalog (no
rewrite, no scan), under an ACCESS EXCLUSIVE lock held for that instant and waited for at most
`lock_timeout`, so the migration fails cleanly rather than queue the outbox's writers behind
a long transaction (run it again). The indexes are built concurrently outside the migration's
transaction, each dropped first in case an interrupted build left an invalid one behind.
Existing events get their positions from the sequencer once the new code runs, oldest first.

Revision ID: 0026_event_feed
Revises: 0025_partition_raw_records
Create Date: 2026-12-06 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0026_event_feed"
down_revision: str | None = "0025_partition_raw_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "3s"
SEQUENCE = "outbox_event_position_seq"
# (index, columns, predicate)
INDEXES = (
    ("ix_outbox_event_feed", ["merchant_id", "position"], "position IS NOT NULL"),
    ("ix_outbox_event_unsequenced", ["created_at"], "position IS NULL"),
)


def _drop_indexes() -> None:
    for name, _, _ in INDEXES:
        op.drop_index(name, table_name="outbox_event", postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(sa.schema.CreateSequence(sa.Sequence(SEQUENCE), if_not_exists=True))
        # IF NOT EXISTS: a run that failed after this point can be run again.
        op.execute("ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS position BIGINT")
        op.execute(
            "ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS version SMALLINT DEFAULT 1 NOT NULL"
        )
    with op.get_context().autocommit_block():
        _drop_indexes()
        for name, columns, where in INDEXES:
            op.create_index(
                name,
                "outbox_event",
                columns,
                unique=False,
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _drop_indexes()
    with short_lock_timeout(LOCK_TIMEOUT):
        op.drop_column("outbox_event", "version")
        op.drop_column("outbox_event", "position")
    op.execute(sa.schema.DropSequence(sa.Sequence(SEQUENCE), if_exists=True))
