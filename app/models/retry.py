"""Retry engine tables: the payment timeline and the domain-event outbox."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

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


# Feed positions: taken only by the sequencer (`app/services/event_feed.py`).
OUTBOX_POSITION = sa.Sequence("outbox_event_position_seq", metadata=SQLModel.metadata)


class OutboxEvent(TenantOwned, table=True):
    """A domain event, written in the transaction of the change it reports. Rows live in
    monthly partitions by `created_at` (app/models/partitioning.py), hence the key
    (id, created_at), which webhook deliveries refer to."""

    __tablename__ = "outbox_event"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", "created_at"),
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
        # A merchant's event feed, in commit order (see `position`).
        sa.Index(
            "ix_outbox_event_feed",
            "merchant_id",
            "position",
            postgresql_where=sa.text("position IS NOT NULL"),
        ),
        # Events waiting for their feed position, oldest first.
        sa.Index(
            "ix_outbox_event_unsequenced",
            "created_at",
            postgresql_where=sa.text("position IS NULL"),
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: uuid.UUID = Field(default_factory=new_id, nullable=False)
    payment_id: uuid.UUID | None = Field(default=None, foreign_key="payment.id", index=True)
    event_type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_type=postgresql.JSONB)
    # The version of the type's payload schema (`app/webhook_events.py`) it was written with.
    version: int = Field(
        default=1, sa_type=sa.SmallInteger, sa_column_kwargs={"server_default": "1"}
    )
    created_at: datetime = timestamp()
    dispatched_at: datetime | None = timestamp(nullable=True)
    # Its place in the merchant's event feed: given after the event committed, by one
    # sequencer at a time, from `outbox_event_position_seq`, so positions become visible in
    # increasing order and a reader past position p never misses an event that commits later
    # (docs/events.md). Null until then.
    position: int | None = Field(default=None, sa_type=sa.BigInteger, nullable=True)


__all__ = ["OUTBOX_POSITION", "OutboxEvent", "PaymentTransition"]
