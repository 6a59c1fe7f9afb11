"""Ingestion lookup indexes: payments by invoice, attempts by the processor's charge id.

Revision ID: 0007_ingestion_indexes
Revises: 0006_model_registry
Create Date: 2026-11-29 17:47:39.361371
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_ingestion_indexes"
down_revision: str | None = "0006_model_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_index(
        "ix_payment_invoice", "payment", ["merchant_id", "processor", "invoice_ref"], unique=False
    )
    op.create_index(
        "ix_payment_attempt_processor_attempt",
        "payment_attempt",
        ["merchant_id", "processor_attempt_id"],
        unique=False,
    )


def downgrade() -> None:

    op.drop_index("ix_payment_attempt_processor_attempt", table_name="payment_attempt")
    op.drop_index("ix_payment_invoice", table_name="payment")
