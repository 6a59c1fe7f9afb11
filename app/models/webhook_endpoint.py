"""Outgoing webhooks: the endpoints merchants register and each event's delivery to them.

(Processors' own inbound webhooks are raw records: see `app/workflows/processor_webhook.py`.)"""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field

from app.enums import WebhookDeliveryStatus
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class WebhookEndpoint(TenantOwned, table=True):
    """Where a merchant wants its domain events delivered; the signing secret is sealed."""

    __tablename__ = "webhook_endpoint"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    url: str = Field(max_length=500)
    secret_encrypted: bytes = Field(sa_type=sa.LargeBinary)
    # The secret the last rotation replaced, sealed like the current one: deliveries carry a
    # signature with it too until it expires, so receivers can switch without losing events.
    previous_secret_encrypted: bytes | None = Field(
        default=None, sa_type=sa.LargeBinary, nullable=True
    )
    previous_secret_expires_at: datetime | None = timestamp(nullable=True, default=None)
    enabled: bool = True
    # The event types it receives; null receives every type.
    event_types: list[str] | None = Field(
        default=None, sa_type=postgresql.ARRAY(sa.String(length=64)), nullable=True
    )
    created_at: datetime = timestamp()


class WebhookDelivery(TenantOwned, table=True):
    """One event for one endpoint: delivered at least once, retried with backoff. Rows live in
    monthly partitions by their event's time, `event_created_at` (app/models/partitioning.py),
    hence the key (id, event_created_at)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", "event_created_at"),
        # The event, by the outbox's key.
        sa.ForeignKeyConstraint(
            ["event_id", "event_created_at"],
            ["outbox_event.id", "outbox_event.created_at"],
            name="fk_webhook_delivery_event_outbox_event",
        ),
        # One delivery of each event to each endpoint from the fan-out; redeliveries
        # (`redelivery_of` set) are further rows. `event_created_at` is the event's own time
        # (the foreign key above), so it adds the partition column without loosening the rule.
        sa.Index(
            "uq_webhook_delivery_first",
            "event_id",
            "endpoint_id",
            "event_created_at",
            unique=True,
            postgresql_where=sa.text("redelivery_of IS NULL"),
        ),
        sa.Index(
            "ix_webhook_delivery_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
        # Finished deliveries, oldest first, for retention.
        sa.Index(
            "ix_webhook_delivery_finished",
            "created_at",
            postgresql_where=sa.text("status <> 'pending'"),
        ),
        # An event's deliveries, redeliveries included: the foreign key's checks.
        sa.Index("ix_webhook_delivery_event", "event_id", "event_created_at"),
        {"postgresql_partition_by": "RANGE (event_created_at)"},
    )

    id: uuid.UUID = Field(default_factory=new_id, nullable=False)
    event_id: uuid.UUID
    # The event's `created_at`: the partition column, set with `event_id`.
    event_created_at: datetime = timestamp()
    endpoint_id: uuid.UUID = Field(foreign_key="webhook_endpoint.id", index=True)
    status: WebhookDeliveryStatus = Field(
        default=WebhookDeliveryStatus.PENDING, sa_type=enum_type(WebhookDeliveryStatus)
    )
    attempts: int = Field(default=0, sa_type=sa.SmallInteger)
    next_attempt_at: datetime = timestamp()
    last_status_code: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = timestamp()
    delivered_at: datetime | None = timestamp(nullable=True)
    # The delivery this one sends again (`redeliverWebhook`); null for the fan-out's.
    redelivery_of: uuid.UUID | None = Field(default=None, nullable=True)


__all__ = ["WebhookDelivery", "WebhookEndpoint"]
