"""A failed recurring charge in recovery, and every attempt made on it."""

import uuid
from datetime import datetime
from typing import TypedDict

import sqlalchemy as sa
from sqlmodel import Field

from app.declines import Decline
from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    DeclineCategory,
    PaymentState,
    Processor,
    RetryStrategy,
)
from app.models.base import TenantOwned, enum_type, merchant_key, new_id, timestamp


def _partial(name: str, where: str, *columns: str) -> sa.Index:
    """An index over the rows `where` holds for."""
    return sa.Index(name, *columns, postgresql_where=sa.text(where))


class Payment(TenantOwned, table=True):
    """One failed recurring charge, from its first failure to a terminal state."""

    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "processor", "processor_payment_id"),
        sa.CheckConstraint("amount_minor >= 0", name="amount_non_negative"),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso"),
        # The payments list: newest failure first, keyset on (first_failed_at, id).
        sa.Index("ix_payment_merchant_failed", "merchant_id", "first_failed_at", "id"),
        sa.Index("ix_payment_merchant_state_failed", "merchant_id", "state", "first_failed_at"),
        # The list's other orders (`orderBy`), keyset on (value, id); nulls are read by id.
        sa.Index("ix_payment_merchant_next_retry", "merchant_id", "next_retry_at", "id"),
        sa.Index("ix_payment_merchant_recovered", "merchant_id", "recovered_at", "id"),
        sa.Index("ix_payment_merchant_amount", "merchant_id", "currency", "amount_minor", "id"),
        # A customer's payments, newest failure first (and lookups by customer).
        sa.Index("ix_payment_customer_failed", "customer_id", "first_failed_at", "id"),
        # Ingestion links a processor's later charges to the invoice already in recovery, and
        # the payments list's search finds an invoice whatever its processor.
        sa.Index("ix_payment_merchant_invoice", "merchant_id", "invoice_ref", "processor"),
        # The payments list's search by the processor's payment id, whatever the processor.
        sa.Index("ix_payment_merchant_processor_payment", "merchant_id", "processor_payment_id"),
        # The retry engine's due scan touches scheduled payments only.
        _partial("ix_payment_due", "state = 'SCHEDULED'", "next_retry_at"),
        # Payments waiting for a first (or a new) decision.
        _partial(
            "ix_payment_needs_decision", "state = 'PENDING' AND needs_decision", "first_failed_at"
        ),
        # Schedules chosen under an older policy version, re-decided by the decide cron.
        _partial(
            "ix_payment_scheduled_policy", "state = 'SCHEDULED'", "merchant_id", "policy_version"
        ),
        # Schedules an event (a new card) asked to decide again.
        _partial(
            "ix_payment_scheduled_needs_decision",
            "state = 'SCHEDULED' AND needs_decision",
            "next_retry_at",
        ),
        # Ledgers find the attempts of payments whose card was replaced by a given card.
        _partial(
            "ix_payment_credential_fingerprint",
            "credential_fingerprint IS NOT NULL",
            "merchant_id",
            "credential_fingerprint",
        ),
        # Claimed payments, for the stuck-attempt sweep.
        _partial("ix_payment_retrying", "state = 'RETRYING'", "retrying_since"),
    )

    merchant_id: uuid.UUID = merchant_key()  # led by its (merchant_id, …) indexes
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    processor: Processor = Field(sa_type=enum_type(Processor))
    processor_payment_id: str = Field(max_length=255)
    amount_minor: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(max_length=3)
    customer_id: uuid.UUID = Field(foreign_key="customer.id")  # led by ix_payment_customer_failed
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
    # When the current card credential took effect: older declines no longer bind it.
    credential_since: datetime | None = timestamp(nullable=True)
    # The fingerprint of the card that replaced the failed one (set with credential_since):
    # the network caps count that card's attempts too, since a retry now charges it.
    credential_fingerprint: str | None = Field(default=None, max_length=128)
    # The latest retry decision, shown as "why was / wasn't it retried".
    decision_at: datetime | None = timestamp(nullable=True)
    decision_reason: str | None = Field(default=None, max_length=1000)
    decision_strategy: RetryStrategy | None = Field(
        default=None, sa_type=enum_type(RetryStrategy), nullable=True
    )
    blocking_rule: str | None = Field(default=None, max_length=64)
    # Set by ingestion (server default) and by events that ask for a new decision.
    needs_decision: bool = Field(default=True, sa_column_kwargs={"server_default": sa.text("true")})
    retrying_since: datetime | None = timestamp(nullable=True)
    # The retry policy version the current schedule was chosen under.
    policy_version: int | None = Field(default=None, nullable=True)


class PaymentAttempt(TenantOwned, table=True):
    """One charge attempt on a payment, whoever made it."""

    __tablename__ = "payment_attempt"
    __table_args__ = (
        sa.UniqueConstraint("payment_id", "number"),
        # An attempt read from a processor is stored once, however often it is read.
        sa.UniqueConstraint("payment_id", "processor_attempt_id"),
        # Ingestion recognises charges it has already recorded by the processor's id.
        sa.Index("ix_payment_attempt_processor_attempt", "merchant_id", "processor_attempt_id"),
        sa.CheckConstraint("number >= 1", name="number_positive"),
        # The portal's own attempt sequence: its number makes the idempotency key.
        sa.UniqueConstraint("payment_id", "portal_number"),
        # Attempts in flight (a handful), for the stuck-attempt sweep, whatever their payment's
        # state now.
        _partial("ix_payment_attempt_in_flight", "outcome = 'in_flight'", "attempted_at"),
    )

    merchant_id: uuid.UUID = merchant_key()  # led by (merchant_id, processor_attempt_id)
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # Led by (payment_id, number): no index of its own.
    payment_id: uuid.UUID = Field(foreign_key="payment.id")
    number: int
    attempted_at: datetime = timestamp()
    outcome: AttemptOutcome = Field(sa_type=enum_type(AttemptOutcome))
    actor: Actor = Field(sa_type=enum_type(Actor))
    processor_attempt_id: str | None = Field(default=None, max_length=255)
    decline_raw_code: str | None = Field(default=None, max_length=64)
    decline_category: DeclineCategory | None = Field(
        default=None, sa_type=enum_type(DeclineCategory), nullable=True
    )
    # The raw record it was read from, through the record's once-only key (raw_record_key).
    raw_record_id: uuid.UUID | None = Field(
        default=None, foreign_key="raw_record_key.raw_record_id", nullable=True
    )
    normalizer_version: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    created_at: datetime = timestamp()
    # Portal attempts only: 1, 2, … among the portal's own retries of this payment.
    portal_number: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    idempotency_key: str | None = Field(default=None, max_length=255)
    # Committed just before the charge request leaves: an unsent attempt can be dropped.
    sent_at: datetime | None = timestamp(nullable=True)
    # The decline as the rules read it, so never-rules see declines on other payments.
    decline_retryable: bool | None = Field(default=None, nullable=True)
    decline_advice: Advice | None = Field(default=None, sa_type=enum_type(Advice), nullable=True)
    not_before: datetime | None = timestamp(nullable=True)
    decline_network_code: str | None = Field(default=None, max_length=16)
    decline_network_advice_code: str | None = Field(default=None, max_length=16)
    # The card credential this attempt was made on, when known (None: the payment's card).
    card_id: uuid.UUID | None = Field(
        default=None, foreign_key="card_credential.id", index=True, nullable=True
    )
    # Portal attempts only: the processor's payment method the charge names, when pre-flight
    # found the default changed (None: the customer's default). Committed with `sent_at`, so a
    # replay of the key sends the same request.
    payment_method_ref: str | None = Field(default=None, max_length=255)


class DeclineColumns(TypedDict):
    """A decline as stored: `payment` (its first failure) and `payment_attempt` (each declined
    attempt) both hold these columns, under these names."""

    decline_category: DeclineCategory
    decline_retryable: bool
    decline_advice: Advice
    decline_raw_code: str | None
    decline_network_code: str | None
    decline_network_advice_code: str | None


def decline_columns(decline: Decline) -> DeclineColumns:
    """The one mapping of a canonical decline to its stored columns."""
    return DeclineColumns(
        decline_category=decline.category,
        decline_retryable=decline.retryable,
        decline_advice=decline.advice,
        decline_raw_code=(decline.raw_code or None) and decline.raw_code[:64],
        decline_network_code=decline.network_decline_code,
        decline_network_advice_code=decline.network_advice_code,
    )
