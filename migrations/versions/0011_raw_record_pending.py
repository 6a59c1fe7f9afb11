"""Raw records waiting for the normalizer: a partial index for the unnormalized-rows sweep.

Built concurrently, outside the migration's transaction: `raw_record` keeps every record ever
read and is the largest table, and a plain build would block ingestion meanwhile. A concurrent
build that was interrupted leaves an invalid index of the same name behind, so it is dropped
first: the migration can simply be run again.

Revision ID: 0011_raw_record_pending
Revises: 0010_attempt_card
Create Date: 2026-12-06 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_raw_record_pending"
down_revision: str | None = "0010_attempt_card"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_raw_record_pending",
            table_name="raw_record",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_raw_record_pending",
            "raw_record",
            ["connection_id", "received_at"],
            unique=False,
            postgresql_where=sa.text("normalized_at IS NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_raw_record_pending",
            table_name="raw_record",
            postgresql_concurrently=True,
            if_exists=True,
        )
