"""Per-attempt card credentials: each attempt records the card it was made on, and a payment
records the fingerprint of the card that replaced its failed one, so the network caps count
every attempt against the card it really hit.

Attempts stored before this revision are given their payment's card: that is the card the
rules counted them against until now, so the ledger's counts do not change on upgrade. Which
card replaced a payment's failed one before this revision is not recorded anywhere but in the
raw records, so those payments start without one.

Revision ID: 0010_attempt_card
Revises: 0009_retry_policy_version
Create Date: 2026-11-29 22:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_attempt_card"
down_revision: str | None = "0009_retry_policy_version"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("payment_attempt", sa.Column("card_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_payment_attempt_card_id_card_credential"),
        "payment_attempt",
        "card_credential",
        ["card_id"],
        ["id"],
    )
    op.execute(
        """
        UPDATE payment_attempt AS a SET card_id = p.card_id
        FROM payment AS p
        WHERE p.id = a.payment_id AND p.card_id IS NOT NULL
        """
    )
    op.create_index(
        op.f("ix_payment_attempt_card_id"), "payment_attempt", ["card_id"], unique=False
    )
    op.add_column(
        "payment", sa.Column("credential_fingerprint", sa.String(length=128), nullable=True)
    )
    op.create_index(
        "ix_payment_credential_fingerprint",
        "payment",
        ["merchant_id", "credential_fingerprint"],
        unique=False,
        postgresql_where=sa.text("credential_fingerprint IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_payment_credential_fingerprint",
        table_name="payment",
        postgresql_where=sa.text("credential_fingerprint IS NOT NULL"),
    )
    op.drop_column("payment", "credential_fingerprint")
    op.drop_index(op.f("ix_payment_attempt_card_id"), table_name="payment_attempt")
    op.drop_constraint(
        op.f("fk_payment_attempt_card_id_card_credential"), "payment_attempt", type_="foreignkey"
    )
    op.drop_column("payment_attempt", "card_id")
