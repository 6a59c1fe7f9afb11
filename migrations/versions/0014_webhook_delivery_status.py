"""Webhook delivery status stored like every other enum column: VARCHAR(32) holding the enum's
values. The values themselves do not change, so no row is touched.

Widening a VARCHAR changes only the catalog, but PostgreSQL rebuilds every index that reads
the column, under the table's exclusive lock: the partial index of pending deliveries reads
`status` in its predicate, and rebuilding it scans the whole table, which keeps every delivery
ever made. So that index is dropped and built again concurrently around the change, outside
the migration's transaction, as 0011 builds its own; meanwhile the delivery sweep finds due
deliveries without it. An interrupted build leaves an invalid index of the same name behind,
so it is dropped first: the migration can simply be run again. The type change waits at most
a few seconds for its lock, then fails to be run again.

Downgrade narrows the column back to VARCHAR(16): unlike widening, that rewrites the table
under its exclusive lock (every stored value fits), so a downgrade of a large delivery table
belongs in a quiet window.

Revision ID: 0014_webhook_delivery_status
Revises: 0013_attempt_decline_columns
Create Date: 2026-12-06 04:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0014_webhook_delivery_status"
down_revision: str | None = "0013_attempt_decline_columns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
STATUS = sa.Enum(
    "pending", "delivered", "failed", name="webhookdeliverystatus", native_enum=False, length=32
)


def _retype(old: sa.types.TypeEngine[str], new: sa.types.TypeEngine[str]) -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_webhook_delivery_due",
            table_name="webhook_delivery",
            postgresql_concurrently=True,
            if_exists=True,
        )
        # Outside a transaction SET LOCAL does nothing: the session's timeout is set for the
        # change and given back, so the exclusive lock is never queued behind a long
        # transaction (with every query of the table queued behind it).
        with short_lock_timeout(LOCK_TIMEOUT, in_transaction=False):
            op.alter_column(
                "webhook_delivery", "status", existing_type=old, type_=new, existing_nullable=False
            )
        op.create_index(
            "ix_webhook_delivery_due",
            "webhook_delivery",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            postgresql_concurrently=True,
        )


def upgrade() -> None:
    _retype(sa.String(length=16), STATUS)


def downgrade() -> None:
    _retype(STATUS, sa.String(length=16))
