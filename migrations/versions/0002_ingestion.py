"""Ingestion: processor connections, raw records, dead letters; provenance on payments.

Revision ID: 0002_ingestion
Revises: 0001_initial
Create Date: 2026-11-29 16:50:07.843531
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_ingestion"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "processor_connection",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
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
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("account_ref", sa.String(length=255), nullable=True),
        sa.Column("credentials_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "active", "paused", "error", name="connectionstatus", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("cursor", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchant.id"],
            name=op.f("fk_processor_connection_merchant_id_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processor_connection")),
    )
    op.create_index(
        op.f("ix_processor_connection_merchant_id"),
        "processor_connection",
        ["merchant_id"],
        unique=False,
    )
    op.create_table(
        "raw_record",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
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
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("normalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("normalizer_version", sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["processor_connection.id"],
            name=op.f("fk_raw_record_connection_id_processor_connection"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_raw_record_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_record")),
        sa.UniqueConstraint(
            "connection_id", "content_hash", name=op.f("uq_raw_record_connection_id_content_hash")
        ),
    )
    op.create_index(
        "ix_raw_record_connection_received",
        "raw_record",
        ["connection_id", "received_at"],
        unique=False,
    )
    op.create_index(op.f("ix_raw_record_merchant_id"), "raw_record", ["merchant_id"], unique=False)
    op.create_table(
        "dead_letter",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("raw_record_id", sa.Uuid(), nullable=False),
        sa.Column("normalizer_version", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["processor_connection.id"],
            name=op.f("fk_dead_letter_connection_id_processor_connection"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_dead_letter_merchant_id_merchant")
        ),
        sa.ForeignKeyConstraint(
            ["raw_record_id"],
            ["raw_record.id"],
            name=op.f("fk_dead_letter_raw_record_id_raw_record"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter")),
        sa.UniqueConstraint(
            "raw_record_id",
            "normalizer_version",
            name=op.f("uq_dead_letter_raw_record_id_normalizer_version"),
        ),
    )
    op.create_index(
        op.f("ix_dead_letter_connection_id"), "dead_letter", ["connection_id"], unique=False
    )
    op.create_index(
        op.f("ix_dead_letter_merchant_id"), "dead_letter", ["merchant_id"], unique=False
    )
    op.add_column("payment", sa.Column("connection_id", sa.Uuid(), nullable=True))
    op.add_column("payment", sa.Column("normalizer_version", sa.SmallInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_payment_connection_id_processor_connection"),
        "payment",
        "processor_connection",
        ["connection_id"],
        ["id"],
    )
    op.add_column("payment_attempt", sa.Column("raw_record_id", sa.Uuid(), nullable=True))
    op.add_column(
        "payment_attempt", sa.Column("normalizer_version", sa.SmallInteger(), nullable=True)
    )
    op.create_unique_constraint(
        op.f("uq_payment_attempt_payment_id_processor_attempt_id"),
        "payment_attempt",
        ["payment_id", "processor_attempt_id"],
    )
    op.create_foreign_key(
        op.f("fk_payment_attempt_raw_record_id_raw_record"),
        "payment_attempt",
        "raw_record",
        ["raw_record_id"],
        ["id"],
    )


def downgrade() -> None:

    op.drop_constraint(
        op.f("fk_payment_attempt_raw_record_id_raw_record"), "payment_attempt", type_="foreignkey"
    )
    op.drop_constraint(
        op.f("uq_payment_attempt_payment_id_processor_attempt_id"),
        "payment_attempt",
        type_="unique",
    )
    op.drop_column("payment_attempt", "normalizer_version")
    op.drop_column("payment_attempt", "raw_record_id")
    op.drop_constraint(
        op.f("fk_payment_connection_id_processor_connection"), "payment", type_="foreignkey"
    )
    op.drop_column("payment", "normalizer_version")
    op.drop_column("payment", "connection_id")
    op.drop_index(op.f("ix_dead_letter_merchant_id"), table_name="dead_letter")
    op.drop_index(op.f("ix_dead_letter_connection_id"), table_name="dead_letter")
    op.drop_table("dead_letter")
    op.drop_index(op.f("ix_raw_record_merchant_id"), table_name="raw_record")
    op.drop_index("ix_raw_record_connection_received", table_name="raw_record")
    op.drop_table("raw_record")
    op.drop_index(op.f("ix_processor_connection_merchant_id"), table_name="processor_connection")
    op.drop_table("processor_connection")
