"""The payments a submitted bulk cancel matched, which its job cancels and no others.

A payment's creation time is its ingestion batch's, taken before the batch commits: a job
bounded by creation time could cancel a payment whose batch began before the action was
submitted and committed after it, one the submission never counted. The action now records
the ids it matched (`bulk_action_payment`, with each payment's merchant, the column a
sharded database would place the rows by), and its job cancels only those.

A new table: no lock on any table in use (under a short lock timeout all the same). Actions
submitted before this revision have no rows, and their jobs keep the creation-time bound. Down
drops the table.

Revision ID: 0035_bulk_action_payments
Revises: 0034_merchant_processor_stats
Create Date: 2026-12-07 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0035_bulk_action_payments"
down_revision: str | None = "0034_merchant_processor_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with short_lock_timeout("5s"):
        op.create_table(
            "bulk_action_payment",
            sa.Column("bulk_action_id", sa.Uuid(), nullable=False),
            sa.Column("merchant_id", sa.Uuid(), nullable=False),
            sa.Column("payment_id", sa.Uuid(), nullable=False),
            sa.PrimaryKeyConstraint(
                "bulk_action_id",
                "merchant_id",
                "payment_id",
                name=op.f("pk_bulk_action_payment"),
            ),
        )


def downgrade() -> None:
    with short_lock_timeout("5s"):
        op.drop_table("bulk_action_payment")
