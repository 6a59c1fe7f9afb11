"""Retry engine: payment timeline, decisions, in-flight portal attempts, outbox and webhooks.

Revision ID: 0004_retry_engine
Revises: 0003_audit_nullable_merchant
Create Date: 2026-11-29 16:58:59.394070
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_retry_engine"
down_revision: str | None = "0003_audit_nullable_merchant"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoint",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("secret_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_webhook_endpoint_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoint")),
    )
    op.create_index(
        op.f("ix_webhook_endpoint_merchant_id"), "webhook_endpoint", ["merchant_id"], unique=False
    )
    op.create_table(
        "outbox_event",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payment_id", sa.Uuid(), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_outbox_event_merchant_id_merchant")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payment.id"], name=op.f("fk_outbox_event_payment_id_payment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_event")),
    )
    op.create_index(
        op.f("ix_outbox_event_merchant_id"), "outbox_event", ["merchant_id"], unique=False
    )
    op.create_index(
        op.f("ix_outbox_event_payment_id"), "outbox_event", ["payment_id"], unique=False
    )
    op.create_index(
        "ix_outbox_event_pending",
        "outbox_event",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("dispatched_at IS NULL"),
    )
    op.create_table(
        "payment_transition",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payment_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.SmallInteger(), nullable=False),
        sa.Column(
            "from_state",
            sa.Enum(
                "PENDING",
                "SCHEDULED",
                "RETRYING",
                "RECOVERED",
                "EXHAUSTED",
                "NOT_RETRYABLE",
                "CANCELED",
                name="paymentstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "to_state",
            sa.Enum(
                "PENDING",
                "SCHEDULED",
                "RETRYING",
                "RECOVERED",
                "EXHAUSTED",
                "NOT_RETRYABLE",
                "CANCELED",
                name="paymentstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchant.id"],
            name=op.f("fk_payment_transition_merchant_id_merchant"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payment.id"], name=op.f("fk_payment_transition_payment_id_payment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_transition")),
    )
    op.create_index(
        op.f("ix_payment_transition_merchant_id"),
        "payment_transition",
        ["merchant_id"],
        unique=False,
    )
    op.create_index(
        "ix_payment_transition_payment_at",
        "payment_transition",
        ["payment_id", "at", "seq"],
        unique=False,
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.SmallInteger(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoint.id"],
            name=op.f("fk_webhook_delivery_endpoint_id_webhook_endpoint"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_event.id"],
            name=op.f("fk_webhook_delivery_event_id_outbox_event"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_webhook_delivery_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
        sa.UniqueConstraint(
            "event_id", "endpoint_id", name=op.f("uq_webhook_delivery_event_id_endpoint_id")
        ),
    )
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        op.f("ix_webhook_delivery_endpoint_id"), "webhook_delivery", ["endpoint_id"], unique=False
    )
    op.create_index(
        op.f("ix_webhook_delivery_merchant_id"), "webhook_delivery", ["merchant_id"], unique=False
    )
    op.add_column(
        "payment", sa.Column("credential_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("payment", sa.Column("decision_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("payment", sa.Column("decision_reason", sa.String(length=1000), nullable=True))
    op.add_column(
        "payment",
        sa.Column(
            "decision_strategy",
            sa.Enum("model", "fixed_schedule", name="retrystrategy", native_enum=False, length=32),
            nullable=True,
        ),
    )
    op.add_column("payment", sa.Column("blocking_rule", sa.String(length=64), nullable=True))
    op.add_column(
        "payment",
        sa.Column("needs_decision", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column("payment", sa.Column("retrying_since", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_payment_needs_decision",
        "payment",
        ["first_failed_at"],
        unique=False,
        postgresql_where=sa.text("state = 'PENDING' AND needs_decision"),
    )
    op.create_index(
        "ix_payment_retrying",
        "payment",
        ["retrying_since"],
        unique=False,
        postgresql_where=sa.text("state = 'RETRYING'"),
    )
    op.add_column("payment_attempt", sa.Column("portal_number", sa.SmallInteger(), nullable=True))
    op.add_column(
        "payment_attempt", sa.Column("idempotency_key", sa.String(length=255), nullable=True)
    )
    op.add_column(
        "payment_attempt", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("payment_attempt", sa.Column("decline_retryable", sa.Boolean(), nullable=True))
    op.add_column(
        "payment_attempt",
        sa.Column(
            "decline_advice",
            sa.Enum(
                "retry",
                "retry_later",
                "update_credentials",
                "never",
                name="advice",
                native_enum=False,
                length=32,
            ),
            nullable=True,
        ),
    )
    op.add_column(
        "payment_attempt", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "payment_attempt", sa.Column("network_decline_code", sa.String(length=16), nullable=True)
    )
    op.add_column(
        "payment_attempt", sa.Column("network_advice_code", sa.String(length=16), nullable=True)
    )
    op.create_unique_constraint(
        op.f("uq_payment_attempt_payment_id_portal_number"),
        "payment_attempt",
        ["payment_id", "portal_number"],
    )


def downgrade() -> None:
    # Older code knows no in-flight outcome: an unresolved portal charge reads as an error.
    op.execute(sa.text("UPDATE payment_attempt SET outcome = 'error' WHERE outcome = 'in_flight'"))
    op.drop_constraint(
        op.f("uq_payment_attempt_payment_id_portal_number"), "payment_attempt", type_="unique"
    )
    op.drop_column("payment_attempt", "network_advice_code")
    op.drop_column("payment_attempt", "network_decline_code")
    op.drop_column("payment_attempt", "not_before")
    op.drop_column("payment_attempt", "decline_advice")
    op.drop_column("payment_attempt", "decline_retryable")
    op.drop_column("payment_attempt", "sent_at")
    op.drop_column("payment_attempt", "idempotency_key")
    op.drop_column("payment_attempt", "portal_number")
    op.drop_index(
        "ix_payment_retrying", table_name="payment", postgresql_where=sa.text("state = 'RETRYING'")
    )
    op.drop_index(
        "ix_payment_needs_decision",
        table_name="payment",
        postgresql_where=sa.text("state = 'PENDING' AND needs_decision"),
    )
    op.drop_column("payment", "retrying_since")
    op.drop_column("payment", "needs_decision")
    op.drop_column("payment", "blocking_rule")
    op.drop_column("payment", "decision_strategy")
    op.drop_column("payment", "decision_reason")
    op.drop_column("payment", "decision_at")
    op.drop_column("payment", "credential_since")
    op.drop_index(op.f("ix_webhook_delivery_merchant_id"), table_name="webhook_delivery")
    op.drop_index(op.f("ix_webhook_delivery_endpoint_id"), table_name="webhook_delivery")
    op.drop_index(
        "ix_webhook_delivery_due",
        table_name="webhook_delivery",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("webhook_delivery")
    op.drop_index("ix_payment_transition_payment_at", table_name="payment_transition")
    op.drop_index(op.f("ix_payment_transition_merchant_id"), table_name="payment_transition")
    op.drop_table("payment_transition")
    op.drop_index(
        "ix_outbox_event_pending",
        table_name="outbox_event",
        postgresql_where=sa.text("dispatched_at IS NULL"),
    )
    op.drop_index(op.f("ix_outbox_event_payment_id"), table_name="outbox_event")
    op.drop_index(op.f("ix_outbox_event_merchant_id"), table_name="outbox_event")
    op.drop_table("outbox_event")
    op.drop_index(op.f("ix_webhook_endpoint_merchant_id"), table_name="webhook_endpoint")
    op.drop_table("webhook_endpoint")
