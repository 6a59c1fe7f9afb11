"""Customer successes: successful charges that opened no recovery, the pay-cycle evidence.

Revision ID: 0008_customer_success
Revises: 0007_ingestion_indexes
Create Date: 2026-11-29 19:36:55.967662
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_customer_success"
down_revision: str | None = "0007_ingestion_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "customer_success",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "processor",
            sa.Enum(
                "stripe",
                "braintree",
                "adyen",
                "checkout",
                name="processor",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("processor_payment_id", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_customer_success_customer_id_customer")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_customer_success_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint(
            "merchant_id", "processor", "processor_payment_id", name=op.f("pk_customer_success")
        ),
    )
    op.create_index(
        "ix_customer_success_customer_at",
        "customer_success",
        ["customer_id", "succeeded_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_customer_success_customer_at", table_name="customer_success")
    op.drop_table("customer_success")
