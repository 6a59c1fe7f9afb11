"""Retry engine tables: the payment timeline, the domain-event outbox and merchant webhooks."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field

from app.enums import PaymentState, WebhookDeliveryStatus
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class PaymentTransition(TenantOwned, table=True):
    """One state change of a payment (its timeline); rows are only ever inserted."""

    __tablename__ = "payment_transition"
    __table_args__ = (sa.Index("ix_payment_transition_payment_at", "payment_id", "at", "seq"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    payment_id: uuid.UUID = Field(foreign_key="payment.id")
    # Orders transitions recorded within the same instant (one unit of work may add several).
    seq: int = Field(sa_type=sa.SmallInteger, default=0)
    from_state: PaymentState = Field(sa_type=enum_type(PaymentState))
    to_state: PaymentState = Field(sa_type=enum_type(PaymentState))
    event: str = Field(max_length=64)
    reason: str = Field(max_length=2000)
    actor: str = Field(max_length=255)
    at: datetime = timestamp()


class OutboxEvent(TenantOwned, table=True):
    """A domain event, written in the transaction of the change it reports."""

    __tablename__ = "outbox_event"
    __table_args__ = (
        # Events not yet fanned out to the merchant's endpoints.
        sa.Index(
            "ix_outbox_event_pending",
            "created_at",
            postgresql_where=sa.text("dispatched_at IS NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    payment_id: uuid.UUID | None = Field(default=None, foreign_key="payment.id", index=True)
    event_type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_type=postgresql.JSONB)
    created_at: datetime = timestamp()
    dispatched_at: datetime | None = timestamp(nullable=True)


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
    created_at: datetime = timestamp()


class WebhookDelivery(TenantOwned, table=True):
    """One event for one endpoint: delivered at least once, retried with backoff."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "endpoint_id"),
        sa.Index(
            "ix_webhook_delivery_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    event_id: uuid.UUID = Field(foreign_key="outbox_event.id")
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


__all__ = ["OutboxEvent", "PaymentTransition", "WebhookDelivery", "WebhookEndpoint"]
