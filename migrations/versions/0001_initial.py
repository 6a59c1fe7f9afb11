"""Initial schema: merchants, keys, customers, cards, payments, attempts, policies, audit.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-29 16:38:05.722231
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "api_key",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "role",
            sa.Enum("merchant", "partner", "support", name="role", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_key_token_hash")),
    )
    op.create_table(
        "merchant",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum("active", "paused", name="merchantstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchant")),
    )
    op.create_table(
        "api_key_merchant",
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_key.id"],
            name=op.f("fk_api_key_merchant_api_key_id_api_key"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_api_key_merchant_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("api_key_id", "merchant_id", name=op.f("pk_api_key_merchant")),
    )
    op.create_index(
        op.f("ix_api_key_merchant_merchant_id"), "api_key_merchant", ["merchant_id"], unique=False
    )
    op.create_table(
        "audit_log",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("actor_key_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_audit_log_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        "ix_audit_log_merchant_created",
        "audit_log",
        ["merchant_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_audit_log_merchant_id"), "audit_log", ["merchant_id"], unique=False)
    op.create_table(
        "customer",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("external_ref", sa.String(length=255), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_customer_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer")),
        sa.UniqueConstraint(
            "merchant_id", "external_ref", name=op.f("uq_customer_merchant_id_external_ref")
        ),
    )
    op.create_index(op.f("ix_customer_merchant_id"), "customer", ["merchant_id"], unique=False)
    op.create_table(
        "retry_policy",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("max_attempts", sa.SmallInteger(), nullable=False),
        sa.Column("window_days", sa.SmallInteger(), nullable=False),
        sa.Column("min_hours_between_attempts", sa.SmallInteger(), nullable=False),
        sa.Column("quiet_hours_start", sa.SmallInteger(), nullable=True),
        sa.Column("quiet_hours_end", sa.SmallInteger(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column(
            "excluded_decline_categories", postgresql.ARRAY(sa.String(length=32)), nullable=False
        ),
        sa.Column(
            "strategy",
            sa.Enum("model", "fixed_schedule", name="retrystrategy", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("fixed_schedule_days", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column(
            "end_action",
            sa.Enum(
                "mark_exhausted",
                "cancel_subscription",
                "leave_invoice_open",
                name="endaction",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.CheckConstraint(
            "(quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)",
            name=op.f("ck_retry_policy_quiet_hours_pair"),
        ),
        sa.CheckConstraint(
            "max_attempts BETWEEN 1 AND 15", name=op.f("ck_retry_policy_max_attempts_range")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_retry_policy_version_positive")),
        sa.CheckConstraint(
            "window_days BETWEEN 1 AND 60", name=op.f("ck_retry_policy_window_days_range")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_retry_policy_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retry_policy")),
        sa.UniqueConstraint(
            "merchant_id", "version", name=op.f("uq_retry_policy_merchant_id_version")
        ),
    )
    op.create_index(
        op.f("ix_retry_policy_merchant_id"), "retry_policy", ["merchant_id"], unique=False
    )
    op.create_table(
        "card_credential",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("brand", sa.String(length=32), nullable=False),
        sa.Column(
            "funding",
            sa.Enum(
                "credit",
                "debit",
                "prepaid",
                "unknown",
                name="cardfunding",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("issuer_country", sa.String(length=2), nullable=True),
        sa.Column("bin", sa.String(length=8), nullable=True),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("exp_month", sa.SmallInteger(), nullable=False),
        sa.Column("exp_year", sa.SmallInteger(), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("last4 ~ '^[0-9]{4}$'", name=op.f("ck_card_credential_last4_digits")),
        sa.CheckConstraint(
            "exp_month BETWEEN 1 AND 12", name=op.f("ck_card_credential_exp_month_range")
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_card_credential_customer_id_customer")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_card_credential_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_credential")),
        sa.UniqueConstraint(
            "merchant_id",
            "fingerprint",
            "exp_month",
            "exp_year",
            name=op.f("uq_card_credential_merchant_id_fingerprint_exp_month_exp_year"),
        ),
    )
    op.create_index(
        op.f("ix_card_credential_customer_id"), "card_credential", ["customer_id"], unique=False
    )
    op.create_index(
        op.f("ix_card_credential_merchant_id"), "card_credential", ["merchant_id"], unique=False
    )
    op.create_table(
        "payment",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
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
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
        sa.Column("card_id", sa.Uuid(), nullable=True),
        sa.Column("invoice_ref", sa.String(length=255), nullable=True),
        sa.Column("subscription_ref", sa.String(length=255), nullable=True),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "decline_category",
            sa.Enum(
                "insufficient_funds",
                "do_not_honor",
                "card_expired",
                "lost_stolen",
                "fraud_suspected",
                "invalid_account",
                "processing_error",
                "velocity_exceeded",
                "authentication_required",
                "card_data_incorrect",
                "not_permitted",
                "payment_revoked",
                "processor_blocked",
                "other",
                name="declinecategory",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("decline_retryable", sa.Boolean(), nullable=False),
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
            nullable=False,
        ),
        sa.Column("decline_raw_code", sa.String(length=64), nullable=True),
        sa.Column("decline_network_code", sa.String(length=16), nullable=True),
        sa.Column("decline_network_advice_code", sa.String(length=16), nullable=True),
        sa.Column(
            "state",
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
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("recovered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "recovered_by",
            sa.Enum(
                "portal",
                "processor",
                "billing_system",
                "customer",
                name="actor",
                native_enum=False,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_payment_currency_iso")),
        sa.CheckConstraint("amount_minor >= 0", name=op.f("ck_payment_amount_non_negative")),
        sa.ForeignKeyConstraint(
            ["card_id"], ["card_credential.id"], name=op.f("fk_payment_card_id_card_credential")
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_payment_customer_id_customer")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_payment_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment")),
        sa.UniqueConstraint(
            "merchant_id",
            "processor",
            "processor_payment_id",
            name=op.f("uq_payment_merchant_id_processor_processor_payment_id"),
        ),
    )
    op.create_index(op.f("ix_payment_card_id"), "payment", ["card_id"], unique=False)
    op.create_index(op.f("ix_payment_customer_id"), "payment", ["customer_id"], unique=False)
    op.create_index(
        "ix_payment_due",
        "payment",
        ["next_retry_at"],
        unique=False,
        postgresql_where=sa.text("state = 'SCHEDULED'"),
    )
    op.create_index(
        "ix_payment_merchant_failed",
        "payment",
        ["merchant_id", "first_failed_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_payment_merchant_id"), "payment", ["merchant_id"], unique=False)
    op.create_index(
        "ix_payment_merchant_state_failed",
        "payment",
        ["merchant_id", "state", "first_failed_at"],
        unique=False,
    )
    op.create_table(
        "payment_attempt",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payment_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "outcome",
            sa.Enum(
                "succeeded",
                "declined",
                "error",
                name="attemptoutcome",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "actor",
            sa.Enum(
                "portal",
                "processor",
                "billing_system",
                "customer",
                name="actor",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("processor_attempt_id", sa.String(length=255), nullable=True),
        sa.Column("raw_decline_code", sa.String(length=64), nullable=True),
        sa.Column(
            "decline_category",
            sa.Enum(
                "insufficient_funds",
                "do_not_honor",
                "card_expired",
                "lost_stolen",
                "fraud_suspected",
                "invalid_account",
                "processing_error",
                "velocity_exceeded",
                "authentication_required",
                "card_data_incorrect",
                "not_permitted",
                "payment_revoked",
                "processor_blocked",
                "other",
                name="declinecategory",
                native_enum=False,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("number >= 1", name=op.f("ck_payment_attempt_number_positive")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_payment_attempt_merchant_id_merchant")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payment.id"], name=op.f("fk_payment_attempt_payment_id_payment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_attempt")),
        sa.UniqueConstraint(
            "payment_id", "number", name=op.f("uq_payment_attempt_payment_id_number")
        ),
    )
    op.create_index(
        op.f("ix_payment_attempt_merchant_id"), "payment_attempt", ["merchant_id"], unique=False
    )
    op.create_index(
        op.f("ix_payment_attempt_payment_id"), "payment_attempt", ["payment_id"], unique=False
    )


def downgrade() -> None:

    op.drop_index(op.f("ix_payment_attempt_payment_id"), table_name="payment_attempt")
    op.drop_index(op.f("ix_payment_attempt_merchant_id"), table_name="payment_attempt")
    op.drop_table("payment_attempt")
    op.drop_index("ix_payment_merchant_state_failed", table_name="payment")
    op.drop_index(op.f("ix_payment_merchant_id"), table_name="payment")
    op.drop_index("ix_payment_merchant_failed", table_name="payment")
    op.drop_index(
        "ix_payment_due", table_name="payment", postgresql_where=sa.text("state = 'SCHEDULED'")
    )
    op.drop_index(op.f("ix_payment_customer_id"), table_name="payment")
    op.drop_index(op.f("ix_payment_card_id"), table_name="payment")
    op.drop_table("payment")
    op.drop_index(op.f("ix_card_credential_merchant_id"), table_name="card_credential")
    op.drop_index(op.f("ix_card_credential_customer_id"), table_name="card_credential")
    op.drop_table("card_credential")
    op.drop_index(op.f("ix_retry_policy_merchant_id"), table_name="retry_policy")
    op.drop_table("retry_policy")
    op.drop_index(op.f("ix_customer_merchant_id"), table_name="customer")
    op.drop_table("customer")
    op.drop_index(op.f("ix_audit_log_merchant_id"), table_name="audit_log")
    op.drop_index("ix_audit_log_merchant_created", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_api_key_merchant_merchant_id"), table_name="api_key_merchant")
    op.drop_table("api_key_merchant")
    op.drop_table("merchant")
    op.drop_table("api_key")
