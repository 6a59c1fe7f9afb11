"""Indexes for searching the payments list by what a merchant has in hand.

`PaymentFilter.search` matches the processor's payment id, the invoice reference, the
customer's reference or a card's last four digits, within one merchant and whatever the
processor. The unique `(merchant_id, processor, processor_payment_id)` and the invoice index
`(merchant_id, processor, invoice_ref)` both need the processor, so:

- `ix_payment_merchant_processor_payment` on `(merchant_id, processor_payment_id)` is new;
- `ix_payment_merchant_invoice` on `(merchant_id, invoice_ref, processor)` replaces
  `ix_payment_invoice`: ingestion's lookup by merchant, processor and invoice uses it as well;
- `ix_card_credential_merchant_last4` on `(merchant_id, last4)` is new. A customer's reference
  is already unique per merchant.

Payments and cards take rows all the time, so every index is built and dropped concurrently
outside the migration's transaction, each dropped first in case an interrupted build left an
invalid one behind. The old invoice index goes only once its replacement is valid.

Revision ID: 0019_payment_search
Revises: 0018_retention_indexes
Create Date: 2026-12-06 11:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019_payment_search"
down_revision: str | None = "0018_retention_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = (
    ("ix_payment_merchant_processor_payment", "payment", ["merchant_id", "processor_payment_id"]),
    ("ix_payment_merchant_invoice", "payment", ["merchant_id", "invoice_ref", "processor"]),
    ("ix_card_credential_merchant_last4", "card_credential", ["merchant_id", "last4"]),
)
OLD = ("ix_payment_invoice", "payment", ["merchant_id", "processor", "invoice_ref"])


def _drop(name: str, table: str) -> None:
    op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def _build(name: str, table: str, columns: list[str]) -> None:
    _drop(name, table)
    op.create_index(name, table, columns, unique=False, postgresql_concurrently=True)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, columns in NEW:
            _build(name, table, columns)
        _drop(OLD[0], OLD[1])


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _build(*OLD)
        for name, table, _ in NEW:
            _drop(name, table)
