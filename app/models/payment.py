"""A failed recurring charge in recovery, and every attempt made on it."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    DeclineCategory,
    PaymentState,
    Processor,
)
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class Payment(TenantOwned, table=True):
    """One failed recurring charge, from its first failure to a terminal state."""

    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "processor", "processor_payment_id"),
        sa.CheckConstraint("amount_minor >= 0", name="amount_non_negative"),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso"),
        # The payments list: newest failure first, keyset on (first_failed_at, id).
        sa.Index("ix_payment_merchant_failed", "merchant_id", "first_failed_at", "id"),
        sa.Index("ix_payment_merchant_state_failed", "merchant_id", "state", "first_failed_at"),
        # The retry engine's due scan touches scheduled payments only.
        sa.Index(
            "ix_payment_due",
            "next_retry_at",
            postgresql_where=sa.text("state = 'SCHEDULED'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    processor: Processor = Field(sa_type=enum_type(Processor))
    processor_payment_id: str = Field(max_length=255)
    amount_minor: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(max_length=3)
    customer_id: uuid.UUID = Field(foreign_key="customer.id", index=True)
    card_id: uuid.UUID | None = Field(default=None, foreign_key="card_credential.id", index=True)
    invoice_ref: str | None = Field(default=None, max_length=255)
    subscription_ref: str | None = Field(default=None, max_length=255)
    first_failed_at: datetime = timestamp()
    decline_category: DeclineCategory = Field(sa_type=enum_type(DeclineCategory))
    decline_retryable: bool
    decline_advice: Advice = Field(sa_type=enum_type(Advice))
    decline_raw_code: str | None = Field(default=None, max_length=64)
    decline_network_code: str | None = Field(default=None, max_length=16)
    decline_network_advice_code: str | None = Field(default=None, max_length=16)
    state: PaymentState = Field(default=PaymentState.PENDING, sa_type=enum_type(PaymentState))
    next_retry_at: datetime | None = timestamp(nullable=True)
    recovered_at: datetime | None = timestamp(nullable=True)
    recovered_by: Actor | None = Field(default=None, sa_type=enum_type(Actor), nullable=True)
    attempt_count: int = Field(default=0)
    connection_id: uuid.UUID | None = Field(
        default=None, foreign_key="processor_connection.id", nullable=True
    )
    normalizer_version: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class PaymentAttempt(TenantOwned, table=True):
    """One charge attempt on a payment, whoever made it."""

    __tablename__ = "payment_attempt"
    __table_args__ = (
        sa.UniqueConstraint("payment_id", "number"),
        # An attempt read from a processor is stored once, however often it is read.
        sa.UniqueConstraint("payment_id", "processor_attempt_id"),
        sa.CheckConstraint("number >= 1", name="number_positive"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    payment_id: uuid.UUID = Field(foreign_key="payment.id", index=True)
    number: int
    attempted_at: datetime = timestamp()
    outcome: AttemptOutcome = Field(sa_type=enum_type(AttemptOutcome))
    actor: Actor = Field(sa_type=enum_type(Actor))
    processor_attempt_id: str | None = Field(default=None, max_length=255)
    raw_decline_code: str | None = Field(default=None, max_length=64)
    decline_category: DeclineCategory | None = Field(
        default=None, sa_type=enum_type(DeclineCategory), nullable=True
    )
    raw_record_id: uuid.UUID | None = Field(
        default=None, foreign_key="raw_record.id", nullable=True
    )
    normalizer_version: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    created_at: datetime = timestamp()
