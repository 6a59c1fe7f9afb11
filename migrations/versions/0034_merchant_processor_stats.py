"""Statistics over a payment's merchant and processor together.

The payments list filters a merchant's payments by processor, among others. The planner takes
the two columns as independent, so for a merchant that charges through one processor it
expects a processor filter to keep a fraction of the merchant's payments when it keeps all of
them; at 6.3 million payments that made it combine the due index with the unique
`(merchant_id, processor, processor_payment_id)` index and read all 250,000 entries of one
merchant for a page that found nothing (23 ms, where the other plans take under 1 ms). A
dependencies statistic tells it how far the processor follows from the merchant.

`CREATE STATISTICS` takes a lock that lets reads and writes go on (under a short lock timeout
all the same); the statistic is filled by the next `ANALYZE` of `payment` (autovacuum's, or
one run by hand after the upgrade). Down drops it.

Revision ID: 0034_merchant_processor_stats
Revises: 0033_raw_keys_claimed_first
Create Date: 2026-12-07 00:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0034_merchant_processor_stats"
down_revision: str | None = "0033_raw_keys_claimed_first"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with short_lock_timeout("5s"):
        op.execute(
            "CREATE STATISTICS IF NOT EXISTS st_payment_merchant_processor (dependencies) "
            "ON merchant_id, processor FROM payment"
        )


def downgrade() -> None:
    with short_lock_timeout("5s"):
        op.execute("DROP STATISTICS IF EXISTS st_payment_merchant_processor")
