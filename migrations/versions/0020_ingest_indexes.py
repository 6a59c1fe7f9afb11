"""Ingestion writes fewer indexes: the single-column indexes another index already leads with,
and the raw rows' merchant index, which no query reads, go.

- `ix_customer_merchant_id`: `uq_customer_merchant_id_external_ref` leads with merchant_id;
- `ix_card_credential_merchant_id`: the (merchant_id, fingerprint, exp_month, exp_year) key;
- `ix_payment_merchant_id`: the payment key and the list indexes lead with merchant_id;
- `ix_payment_attempt_merchant_id`: `ix_payment_attempt_processor_attempt` leads with it;
- `ix_payment_attempt_payment_id`: `uq_payment_attempt_payment_id_number` leads with it;
- `ix_raw_record_merchant_id`: raw rows are read by connection or by id, never by merchant alone.

Each cost a write per ingested row, and the single-column merchant indexes misled the planner
into reading a merchant's whole history to answer a lookup of a thousand ids. Lookups by
merchant (and the foreign keys' checks) use the leading column of the composite indexes.

Dropped and rebuilt concurrently, outside the migration's transaction, so the tables take
their inserts meanwhile; every step is `IF [NOT] EXISTS`-safe, so an interrupted run can simply
be run again (a rebuild first drops an invalid leftover of an interrupted build).

Revision ID: 0020_ingest_indexes
Revises: 0019_payment_search
Create Date: 2026-12-06 11:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020_ingest_indexes"
down_revision: str | None = "0019_payment_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, column)
INDEXES = (
    ("ix_customer_merchant_id", "customer", "merchant_id"),
    ("ix_card_credential_merchant_id", "card_credential", "merchant_id"),
    ("ix_payment_merchant_id", "payment", "merchant_id"),
    ("ix_payment_attempt_merchant_id", "payment_attempt", "merchant_id"),
    ("ix_payment_attempt_payment_id", "payment_attempt", "payment_id"),
    ("ix_raw_record_merchant_id", "raw_record", "merchant_id"),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _ in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, column in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
            op.create_index(name, table, [column], unique=False, postgresql_concurrently=True)
