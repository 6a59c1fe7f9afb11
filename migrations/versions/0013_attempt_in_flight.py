"""The portal's attempts in flight, indexed for the stuck-attempt sweep, which now looks at
them whatever their payment's state (a charge read back by ingestion may have recovered the
payment while the attempt's job was lost).

The index is built concurrently, outside the migration's transaction: `payment_attempt` is
one of the largest tables, and a plain build would block every write to it meanwhile.

Revision ID: 0013_attempt_in_flight
Revises: 0012_webhook_previous_secret
Create Date: 2026-12-06 02:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_attempt_in_flight"
down_revision: str | None = "0012_webhook_previous_secret"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("outcome = 'in_flight' AND portal_number IS NOT NULL")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_payment_attempt_in_flight",
            "payment_attempt",
            ["attempted_at"],
            unique=False,
            postgresql_where=_WHERE,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_payment_attempt_in_flight",
            table_name="payment_attempt",
            postgresql_concurrently=True,
            if_exists=True,
        )
