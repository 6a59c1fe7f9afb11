"""Support's bulk actions: one row per submitted action, its job's progress and outcome."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from app.enums import BulkActionKind, BulkActionStatus
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class BulkAction(TenantOwned, table=True):
    """A bulk change requested by a support key, carried out by one job.

    It may span merchants, so it belongs to none: `merchant_id` is always NULL, and scoped
    sessions (merchant and partner keys) never see it, as with support's audit entries.
    A client mutation id makes a submission idempotent per key: the same id from the same key
    finds the action already submitted (`uq_bulk_action_client_mutation`)."""

    __tablename__ = "bulk_action"
    __table_args__ = (
        sa.Index(
            "uq_bulk_action_client_mutation",
            "actor_key_id",
            "client_mutation_id",
            unique=True,
            postgresql_where=sa.text("client_mutation_id IS NOT NULL"),
        ),
    )

    merchant_id: uuid.UUID | None = Field(  # type: ignore[assignment]
        default=None, foreign_key="merchant.id", nullable=True
    )
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    kind: BulkActionKind = Field(sa_type=enum_type(BulkActionKind))
    status: BulkActionStatus = Field(sa_type=enum_type(BulkActionStatus))
    # Who asked: the key's name (the audit log's actor is built from it) and id.
    actor_name: str = Field(max_length=255)
    actor_key_id: uuid.UUID | None = Field(default=None, nullable=True)
    client_mutation_id: str | None = Field(default=None, max_length=255)
    # What was asked: the filter and merchants, as JSON the job reads back.
    request: dict[str, Any] = Field(sa_type=postgresql.JSONB)
    reason: str = Field(max_length=1000)
    # How many payments (or merchants) the action matched when it was submitted.
    expected_count: int
    # What the job did so far: changed, and left alone (already ended, or a charge in flight).
    succeeded_count: int = Field(default=0)
    skipped_count: int = Field(default=0)
    error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = timestamp()
    started_at: datetime | None = timestamp(nullable=True)
    finished_at: datetime | None = timestamp(nullable=True)


class BulkActionPayment(SQLModel, table=True):
    """A payment a submitted cancel matched: the job cancels these and no others (those still
    cancelable and matching its filter), so never a payment the submission could not see,
    such as one whose batch began before it and committed after. Written with the action, in
    one statement per merchant; deleted when the action ends. Support's alone, like the
    action: no API reads it. No foreign keys: a check per row
    would cost more than the row, and the rows live only as long as their action runs."""

    __tablename__ = "bulk_action_payment"

    bulk_action_id: uuid.UUID = Field(primary_key=True)
    # The payment's merchant: the job reads one merchant's rows at a time, and a database
    # sharded by merchant keeps them beside the payments.
    merchant_id: uuid.UUID = Field(primary_key=True)
    payment_id: uuid.UUID = Field(primary_key=True)


__all__ = ["BulkAction", "BulkActionPayment"]
