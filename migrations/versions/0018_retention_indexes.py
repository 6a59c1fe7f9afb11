"""Indexes for pruning history: outbox events already fanned out, and finished webhook
deliveries, each by age.

The `prune_history` cron deletes, in small batches, outbox events and webhook deliveries older
than their retention window. Without these partial indexes each batch would scan the table; with
them it reads the oldest rows first. Both tables take rows all the time, so the indexes are built
concurrently outside the migration's transaction, each dropped first in case an interrupted build
left an invalid one behind.

Revision ID: 0018_retention_indexes
Revises: 0017_preflight_end_actions
Create Date: 2026-12-06 11:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_retention_indexes"
down_revision: str | None = "0017_preflight_end_actions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_outbox_event_dispatched", "outbox_event", "dispatched_at IS NOT NULL"),
    ("ix_webhook_delivery_finished", "webhook_delivery", "status <> 'pending'"),
)


def _drop(name: str, table: str) -> None:
    op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, where in INDEXES:
            _drop(name, table)
            op.create_index(
                name,
                table,
                ["created_at"],
                unique=False,
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _ in INDEXES:
            _drop(name, table)
