"""Customers and their card credentials (never a card number)."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from app.enums import CardFunding, Processor
from app.models.base import TenantOwned, enum_type, merchant_key, new_id, timestamp


class Customer(TenantOwned, table=True):
    """A merchant's subscriber, as the processor knows them."""

    __table_args__ = (sa.UniqueConstraint("merchant_id", "external_ref"),)

    merchant_id: uuid.UUID = merchant_key()  # led by (merchant_id, external_ref)
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    external_ref: str = Field(max_length=255)
    timezone: str | None = Field(default=None, max_length=64)
    country: str | None = Field(default=None, max_length=2)
    created_at: datetime = timestamp()


class CardCredential(TenantOwned, table=True):
    """One card credential: network, fingerprint and expiry identify it; no PAN is stored."""

    __tablename__ = "card_credential"
    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "fingerprint", "exp_month", "exp_year"),
        sa.CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month_range"),
        sa.CheckConstraint("last4 ~ '^[0-9]{4}$'", name="last4_digits"),
        # The payments list's search by a card's last four digits.
        sa.Index("ix_card_credential_merchant_last4", "merchant_id", "last4"),
    )

    merchant_id: uuid.UUID = merchant_key()  # led by (merchant_id, fingerprint, …)
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    customer_id: uuid.UUID = Field(foreign_key="customer.id", index=True)
    brand: str = Field(max_length=32)
    funding: CardFunding = Field(sa_type=enum_type(CardFunding))
    issuer_country: str | None = Field(default=None, max_length=2)
    bin: str | None = Field(default=None, max_length=8)
    last4: str = Field(max_length=4)
    exp_month: int = Field(sa_type=sa.SmallInteger)
    exp_year: int = Field(sa_type=sa.SmallInteger)
    fingerprint: str = Field(max_length=128)
    created_at: datetime = timestamp()


class CustomerSuccess(TenantOwned, table=True):
    """A successful charge that opened no recovery: the customer's pay-cycle evidence.

    Recovered payments keep their successful attempts in `payment_attempt`; this holds the
    other successes, which ingestion otherwise keeps only as raw records. One row per charge,
    so delivering or replaying the same charge again rewrites it in place.
    """

    __tablename__ = "customer_success"
    __table_args__ = (
        # The latest successes of a customer before a time: one index range, newest first.
        sa.Index("ix_customer_success_customer_at", "customer_id", "succeeded_at"),
    )

    # Keyed like a payment, by the processor's charge id: no surrogate id to index as well.
    merchant_id: uuid.UUID = Field(foreign_key="merchant.id", primary_key=True)
    processor: Processor = Field(sa_type=enum_type(Processor), primary_key=True)
    processor_payment_id: str = Field(max_length=255, primary_key=True)
    customer_id: uuid.UUID = Field(foreign_key="customer.id")
    succeeded_at: datetime = timestamp()
