"""End actions carried out at the processor when a payment's recovery ends unpaid."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from app.enums import EndAction, EndActionStatus
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class EndActionRun(TenantOwned, table=True):
    """The merchant's end action for one payment, and how carrying it out went.

    Written in the transaction that ends the payment; the end-action job carries it out at the
    processor and, in the transaction that marks it done, writes the outbox event, so the
    event never announces an action that did not happen.
    """

    __tablename__ = "end_action"
    __table_args__ = (
        sa.UniqueConstraint("payment_id"),
        # The job's scan: runs waiting for a (new) try, soonest first.
        sa.Index(
            "ix_end_action_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    payment_id: uuid.UUID = Field(foreign_key="payment.id")
    action: EndAction = Field(sa_type=enum_type(EndAction))
    status: EndActionStatus = Field(sa_type=enum_type(EndActionStatus))
    tries: int = Field(default=0, sa_type=sa.SmallInteger)
    next_attempt_at: datetime | None = timestamp(nullable=True)
    last_error: str | None = Field(default=None, max_length=2000)
    # What was done, or why it could not be (shown to the merchant and sent in the event).
    detail: str | None = Field(default=None, max_length=1000)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    completed_at: datetime | None = timestamp(nullable=True)


__all__ = ["EndActionRun"]
