"""An index of the attempts in flight, for the stuck-attempt sweep (`reconcile_stuck`).

The sweep also finds the portal's attempts left in flight on payments that are no longer
RETRYING (an unsent attempt to drop, or a sent one whose charge ingestion read back first), so
it reads in-flight attempts by their age rather than RETRYING payments only:
`ix_payment_attempt_in_flight` on `payment_attempt (attempted_at) WHERE outcome = 'in_flight'`
holds a handful of rows, however long the attempts' history.

Built concurrently, outside the migration's transaction, so attempts are written meanwhile;
dropped first in case an interrupted build left an invalid one behind.

Revision ID: 0030_attempts_in_flight
Revises: 0029_partition_webhook_delivery
Create Date: 2026-12-06 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0030_attempts_in_flight"
down_revision: str | None = "0029_partition_webhook_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_payment_attempt_in_flight"
TABLE = "payment_attempt"


def _drop() -> None:
    op.drop_index(NAME, table_name=TABLE, postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _drop()
        op.create_index(
            NAME,
            TABLE,
            ["attempted_at"],
            unique=False,
            postgresql_concurrently=True,
            postgresql_where=sa.text("outcome = 'in_flight'"),
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _drop()
