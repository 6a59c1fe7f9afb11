"""Webhook secret rotation with a grace period: an endpoint keeps the secret its last rotation
replaced (sealed like the current one) and when that secret stops being used to sign.

Both columns are nullable and have no default, so adding them only changes the catalog: no
table rewrite, and the lock is held for an instant. Endpoints stored before this revision have
no previous secret, which is what they had.

Revision ID: 0012_webhook_previous_secret
Revises: 0011_raw_record_pending
Create Date: 2026-12-06 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_webhook_previous_secret"
down_revision: str | None = "0011_raw_record_pending"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "webhook_endpoint",
        sa.Column("previous_secret_encrypted", sa.LargeBinary(), nullable=True),
    )
    op.add_column(
        "webhook_endpoint",
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("webhook_endpoint", "previous_secret_expires_at")
    op.drop_column("webhook_endpoint", "previous_secret_encrypted")
