"""Pre-flight payment methods and end actions at the processor.

`payment_attempt.payment_method_ref` holds the payment method a portal attempt was sent on when
pre-flight found the customer's default changed (NULL: the default, as for every attempt stored
before this revision). The column is nullable without a default, so adding it changes only the
catalog; the ALTER waits at most `lock_timeout` for its lock.

`end_action` is new: one row per payment whose recovery ended with a merchant end action to
carry out at the processor (cancel the subscription, or leave the invoice open). Its foreign key
to `payment` is added under the same short lock timeout (it takes a brief SHARE ROW EXCLUSIVE
lock on `payment`, and the new table is empty, so there is nothing to validate); its indexes
are built on the empty table inside the transaction.

Revision ID: 0017_preflight_end_actions
Revises: 0016_model_decision_by_model
Create Date: 2026-12-06 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0017_preflight_end_actions"
down_revision: str | None = "0016_model_decision_by_model"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"


def upgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.add_column(
            "payment_attempt",
            sa.Column("payment_method_ref", sa.String(length=255), nullable=True),
        )
        op.create_table(
            "end_action",
            sa.Column("merchant_id", sa.Uuid(), nullable=False),
            sa.Column("id", sa.Uuid(), nullable=False),
            sa.Column("payment_id", sa.Uuid(), nullable=False),
            sa.Column("action", sa.String(length=32), nullable=False),
            sa.Column("status", sa.String(length=32), nullable=False),
            sa.Column("tries", sa.SmallInteger(), nullable=False),
            sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_error", sa.String(length=2000), nullable=True),
            sa.Column("detail", sa.String(length=1000), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
            sa.ForeignKeyConstraint(
                ["merchant_id"], ["merchant.id"], name=op.f("fk_end_action_merchant_id_merchant")
            ),
            sa.ForeignKeyConstraint(
                ["payment_id"], ["payment.id"], name=op.f("fk_end_action_payment_id_payment")
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_end_action")),
            sa.UniqueConstraint("payment_id", name=op.f("uq_end_action_payment_id")),
        )
        op.create_index(
            op.f("ix_end_action_merchant_id"), "end_action", ["merchant_id"], unique=False
        )
        op.create_index(
            "ix_end_action_due",
            "end_action",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
        )


def downgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.drop_table("end_action")
        op.drop_column("payment_attempt", "payment_method_ref")
