"""Model registry: trained retry-timing models and the decisions made with them.

Revision ID: 0006_model_registry
Revises: 0005_recovery_rollups
Create Date: 2026-11-29 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_model_registry"
down_revision: str | None = "0005_recovery_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_version",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature_list", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("parameters", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("gate", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "champion",
                "challenger",
                "shadow",
                "retired",
                name="modelstatus",
                native_enum=False,
                create_constraint=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
    )
    op.create_index("ix_model_version_trained", "model_version", ["trained_at", "id"], unique=False)
    op.create_index(
        "uq_model_version_champion",
        "model_version",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'champion'"),
    )
    op.create_table(
        "model_decision",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payment_id", sa.Uuid(), nullable=False),
        sa.Column("model_version_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("chosen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("expected_recovered_minor", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("explanation", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_model_decision_merchant_id_merchant")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_model_decision_model_version_id_model_version"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payment.id"], name=op.f("fk_model_decision_payment_id_payment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_decision")),
    )
    op.create_index(
        op.f("ix_model_decision_merchant_id"), "model_decision", ["merchant_id"], unique=False
    )
    op.create_index(
        op.f("ix_model_decision_model_version_id"),
        "model_decision",
        ["model_version_id"],
        unique=False,
    )
    op.create_index(
        "ix_model_decision_payment_at",
        "model_decision",
        ["payment_id", "decided_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_model_decision_payment_at", table_name="model_decision")
    op.drop_index(op.f("ix_model_decision_model_version_id"), table_name="model_decision")
    op.drop_index(op.f("ix_model_decision_merchant_id"), table_name="model_decision")
    op.drop_table("model_decision")
    op.drop_index(
        "uq_model_version_champion",
        table_name="model_version",
        postgresql_where=sa.text("status = 'champion'"),
    )
    op.drop_index("ix_model_version_trained", table_name="model_version")
    op.drop_table("model_version")
