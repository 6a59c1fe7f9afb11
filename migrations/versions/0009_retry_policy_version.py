"""Retry re-decisions: the policy version a payment's schedule was chosen under, and the
partial indexes the decide cron uses to find schedules a policy change or a new card
invalidated.

Revision ID: 0009_retry_policy_version
Revises: 0008_customer_success
Create Date: 2026-11-29 19:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_retry_policy_version"
down_revision: str | None = "0008_customer_success"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("payment", sa.Column("policy_version", sa.Integer(), nullable=True))
    # Schedules stored before this revision were chosen under the policy current now.
    op.execute(
        """
        UPDATE payment AS p SET policy_version = latest.version
        FROM (SELECT merchant_id, max(version) AS version FROM retry_policy GROUP BY merchant_id)
             AS latest
        WHERE latest.merchant_id = p.merchant_id AND p.state = 'SCHEDULED'
        """
    )
    op.create_index(
        "ix_payment_scheduled_policy",
        "payment",
        ["merchant_id", "policy_version"],
        unique=False,
        postgresql_where=sa.text("state = 'SCHEDULED'"),
    )
    op.create_index(
        "ix_payment_scheduled_needs_decision",
        "payment",
        ["next_retry_at"],
        unique=False,
        postgresql_where=sa.text("state = 'SCHEDULED' AND needs_decision"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_payment_scheduled_needs_decision",
        table_name="payment",
        postgresql_where=sa.text("state = 'SCHEDULED' AND needs_decision"),
    )
    op.drop_index(
        "ix_payment_scheduled_policy",
        table_name="payment",
        postgresql_where=sa.text("state = 'SCHEDULED'"),
    )
    op.drop_column("payment", "policy_version")
