"""Retry engine tables: the payment timeline and the domain-event outbox."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field

from app.enums import Actor, PaymentState
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class PaymentTransition(TenantOwned, table=True):
    """One state change of a payment (its timeline); rows are only ever inserted, into monthly
    partitions by `at` (app/models/partitioning.py), hence the key (id, at)."""

    __tablename__ = "payment_transition"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", "at"),
        sa.Index("ix_payment_transition_payment_at", "payment_id", "at", "seq"),
        {"postgresql_partition_by": "RANGE (at)"},
    )

    id: uuid.UUID = Field(default_factory=new_id, nullable=False)
    payment_id: uuid.UUID = Field(foreign_key="payment.id")
    # Orders transitions recorded within the same instant (one unit of work may add several).
    seq: int = Field(sa_type=sa.SmallInteger, default=0)
    from_state: PaymentState = Field(sa_type=enum_type(PaymentState))
    to_state: PaymentState = Field(sa_type=enum_type(PaymentState))
    event: str = Field(max_length=64)
    reason: str = Field(max_length=2000)
    # An `Actor` value, or the label of the API key at whose request the portal made the change
    # (`api_key:<name>`, as in the audit log); see `who`.
    actor: str = Field(max_length=255)
    at: datetime = timestamp()

    def who(self) -> tuple[Actor, str | None]:
        """Who brought the change about, and the API key that asked for it (if one did): a
        change made at someone's request is the portal's, on their behalf."""
        try:
            return Actor(self.actor), None
        except ValueError:
            return Actor.PORTAL, self.actor


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
        # Events already fanned out, oldest first, for retention.
        sa.Index(
            "ix_outbox_event_dispatched",
            "created_at",
            postgresql_where=sa.text("dispatched_at IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    payment_id: uuid.UUID | None = Field(default=None, foreign_key="payment.id", index=True)
    event_type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_type=postgresql.JSONB)
    created_at: datetime = timestamp()
    dispatched_at: datetime | None = timestamp(nullable=True)


__all__ = ["OutboxEvent", "PaymentTransition"]
