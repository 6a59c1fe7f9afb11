"""Managing what was created: API key scopes and expiry, the event types a webhook endpoint
receives, and redeliveries of a webhook event.

- `api_key.scopes`: what a key may do (`read`, `write`). Existing keys keep full rights: the
  column is added with the constant default `{read,write}`, which PostgreSQL (11 and later)
  stores in the catalog, so no row is rewritten.
- `api_key.expires_at`: when a key stops authenticating; null (every existing key) never.
- `webhook_endpoint.event_types`: the event types an endpoint receives; null (every existing
  endpoint) receives them all.
- `webhook_delivery.redelivery_of`: the delivery a redelivery repeats; null for the delivery
  fan-out made. The fan-out's one-delivery-per-event-and-endpoint rule now holds for those
  only: the unique constraint is replaced by a unique index on the same columns where
  `redelivery_of IS NULL`, built concurrently before the constraint goes, so the rule holds
  throughout and inserts keep flowing.

The added columns are nullable or have a constant default: catalog-only changes, each under
a short `lock_timeout` (it fails cleanly and can be run again rather than queue every query of
the table behind it).

Revision ID: 0022_manage_integrations
Revises: 0021_bulk_actions
Create Date: 2026-12-06 13:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.locks import short_lock_timeout

revision: str = "0022_manage_integrations"
down_revision: str | None = "0021_bulk_actions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
FIRST_DELIVERY = "uq_webhook_delivery_first"
OLD_CONSTRAINT = "uq_webhook_delivery_event_id_endpoint_id"


def upgrade() -> None:
    with short_lock_timeout(LOCK_TIMEOUT):
        op.add_column(
            "api_key",
            sa.Column(
                "scopes",
                postgresql.ARRAY(sa.String(length=16)),
                server_default=sa.text("'{read,write}'"),
                nullable=False,
            ),
            if_not_exists=True,
        )
        op.add_column(
            "api_key", sa.Column("expires_at", sa.DateTime(timezone=True)), if_not_exists=True
        )
        op.add_column(
            "webhook_endpoint",
            sa.Column("event_types", postgresql.ARRAY(sa.String(length=64)), nullable=True),
            if_not_exists=True,
        )
        op.add_column(
            "webhook_delivery",
            sa.Column("redelivery_of", sa.Uuid(), nullable=True),
            if_not_exists=True,
        )
    with op.get_context().autocommit_block():
        op.drop_index(
            FIRST_DELIVERY,
            table_name="webhook_delivery",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            FIRST_DELIVERY,
            "webhook_delivery",
            ["event_id", "endpoint_id"],
            unique=True,
            postgresql_where=sa.text("redelivery_of IS NULL"),
            postgresql_concurrently=True,
        )
        with short_lock_timeout(LOCK_TIMEOUT, in_transaction=False):
            op.execute(f"ALTER TABLE webhook_delivery DROP CONSTRAINT IF EXISTS {OLD_CONSTRAINT}")


def downgrade() -> None:
    # Redeliveries would break the restored constraint: they go first.
    op.execute("DELETE FROM webhook_delivery WHERE redelivery_of IS NOT NULL")
    op.create_unique_constraint(OLD_CONSTRAINT, "webhook_delivery", ["event_id", "endpoint_id"])
    op.drop_index(FIRST_DELIVERY, table_name="webhook_delivery")
    op.drop_column("webhook_delivery", "redelivery_of")
    op.drop_column("webhook_endpoint", "event_types")
    op.drop_column("api_key", "expires_at")
    op.drop_column("api_key", "scopes")
