"""Indexes for the payments list's orders (`orderBy`) and for a customer's payments.

Each order is read keyset-paged from an index led by the merchant, with the payment's id as
the tie-break:

- `ix_payment_merchant_next_retry` on `(merchant_id, next_retry_at, id)`: NEXT_RETRY_AT; the
  payments without a next retry (nulls, last in the index) are read from it too, by id;
- `ix_payment_merchant_recovered` on `(merchant_id, recovered_at, id)`: RECOVERED_AT, likewise;
- `ix_payment_merchant_amount` on `(merchant_id, currency, amount_minor, id)`: AMOUNT, which
  is ordered within one currency;
- `ix_payment_customer_failed` on `(customer_id, first_failed_at, id)` replaces
  `ix_payment_customer_id`: `Customer.payments` reads a customer's payments newest failure
  first from it, and lookups by customer (the foreign key's checks among them) use its
  leading column.

FAILED_AT, either direction, keeps `ix_payment_merchant_failed` and, per state,
`ix_payment_merchant_state_failed`.

Payments take rows and updates all the time, so every index is built and dropped concurrently
outside the migration's transaction, each dropped first in case an interrupted build left an
invalid one behind. The old customer index goes only once its replacement is valid.

Revision ID: 0027_payment_orders
Revises: 0026_event_feed
Create Date: 2026-12-06 14:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0027_payment_orders"
down_revision: str | None = "0026_event_feed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = (
    ("ix_payment_merchant_next_retry", "payment", ["merchant_id", "next_retry_at", "id"]),
    ("ix_payment_merchant_recovered", "payment", ["merchant_id", "recovered_at", "id"]),
    ("ix_payment_merchant_amount", "payment", ["merchant_id", "currency", "amount_minor", "id"]),
    ("ix_payment_customer_failed", "payment", ["customer_id", "first_failed_at", "id"]),
)
OLD = ("ix_payment_customer_id", "payment", ["customer_id"])


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
