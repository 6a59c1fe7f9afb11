"""Support's bulk actions.

`bulk_action` is new: one row per bulk change a support key submits (cancel the recovery of
the payments a filter matches, pause several merchants' recovery), with its job's progress and
outcome. It belongs to no merchant (`merchant_id` stays NULL, as on support's audit entries).
The partial unique index on (key, client mutation id) makes a resubmission find the action
already submitted. The table is new and empty: its indexes are built inside the transaction,
and its foreign key to `merchant` takes that table's brief SHARE ROW EXCLUSIVE lock under the
short lock timeout, with nothing to validate.

Revision ID: 0021_bulk_actions
Revises: 0020_ingest_indexes
Create Date: 2026-12-06 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.locks import short_lock_timeout

revision: str = "0021_bulk_actions"
down_revision: str | None = "0020_ingest_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"


def upgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.create_table(
            "bulk_action",
            sa.Column("merchant_id", sa.Uuid(), nullable=True),
            sa.Column("id", sa.Uuid(), nullable=False),
            sa.Column("kind", sa.String(length=32), nullable=False),
            sa.Column("status", sa.String(length=32), nullable=False),
            sa.Column("actor_name", sa.String(length=255), nullable=False),
            sa.Column("actor_key_id", sa.Uuid(), nullable=True),
            sa.Column("client_mutation_id", sa.String(length=255), nullable=True),
            sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
            sa.Column("reason", sa.String(length=1000), nullable=False),
            sa.Column("expected_count", sa.Integer(), nullable=False),
            sa.Column("succeeded_count", sa.Integer(), nullable=False),
            sa.Column("skipped_count", sa.Integer(), nullable=False),
            sa.Column("error", sa.String(length=1000), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.ForeignKeyConstraint(
                ["merchant_id"], ["merchant.id"], name=op.f("fk_bulk_action_merchant_id_merchant")
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_action")),
        )
        op.create_index(
            "uq_bulk_action_client_mutation",
            "bulk_action",
            ["actor_key_id", "client_mutation_id"],
            unique=True,
            postgresql_where=sa.text("client_mutation_id IS NOT NULL"),
        )


def downgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.drop_table("bulk_action")
