"""Audit log: merchant optional, for changes that belong to no merchant (support keys).

Revision ID: 0003_audit_nullable_merchant
Revises: 0002_ingestion
Create Date: 2026-11-29 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_audit_nullable_merchant"
down_revision: str | None = "0002_ingestion"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("audit_log", "merchant_id", existing_type=sa.Uuid(), nullable=True)


def downgrade() -> None:
    # Rows without a merchant cannot survive the NOT NULL constraint coming back.
    op.execute(sa.text("DELETE FROM audit_log WHERE merchant_id IS NULL"))
    op.alter_column("audit_log", "merchant_id", existing_type=sa.Uuid(), nullable=False)
