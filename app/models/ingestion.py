"""Processor connections, the raw records read from them, and records that failed to normalize."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from app.enums import ConnectionStatus, Processor
from app.models.base import TenantOwned, enum_type, merchant_key, new_id, timestamp


class ProcessorConnection(TenantOwned, table=True):
    """A merchant's account at a processor: where to read, with which (encrypted) credentials."""

    __tablename__ = "processor_connection"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    kind: Processor = Field(sa_type=enum_type(Processor))
    name: str = Field(max_length=200)
    base_url: str = Field(max_length=500)
    # The processor's own account id (Braintree merchant id, Adyen merchant account …).
    account_ref: str | None = Field(default=None, max_length=255)
    credentials_encrypted: bytes = Field(sa_type=sa.LargeBinary)
    status: ConnectionStatus = Field(
        default=ConnectionStatus.ACTIVE, sa_type=enum_type(ConnectionStatus)
    )
    last_error: str | None = Field(default=None, max_length=2000)
    # Where the next poll starts; committed with the rows it covers.
    cursor: dict[str, Any] = Field(default_factory=dict, sa_type=postgresql.JSONB)
    cursor_at: datetime | None = timestamp(nullable=True)
    last_polled_at: datetime | None = timestamp(nullable=True)
    created_at: datetime = timestamp()


class RawRecord(TenantOwned, table=True):
    """One record exactly as a processor sent it; kept so history can be replayed.

    Stored once per connection and content: a trigger claims the record's `RawRecordKey` before
    each insert and skips the row when another row holds it (migration 0022). Rows live in
    monthly partitions by `received_at` (app/models/partitioning.py), hence the key
    (id, received_at)."""

    __tablename__ = "raw_record"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", "received_at"),
        sa.Index("ix_raw_record_connection_received", "connection_id", "received_at"),
        # Rows still waiting for the normalizer (webhook deliveries), for the sweep that
        # queues their normalization when the job queued on arrival was lost.
        sa.Index(
            "ix_raw_record_pending",
            "connection_id",
            "received_at",
            postgresql_where=sa.text("normalized_at IS NULL"),
        ),
        {"postgresql_partition_by": "RANGE (received_at)"},
    )

    # Read by connection (the scope checks its merchant) or by id, never by merchant alone.
    merchant_id: uuid.UUID = merchant_key()
    id: uuid.UUID = Field(default_factory=new_id, nullable=False)
    connection_id: uuid.UUID = Field(foreign_key="processor_connection.id")
    processor: Processor = Field(sa_type=enum_type(Processor))
    external_id: str | None = Field(default=None, max_length=255)
    received_at: datetime = timestamp()
    content_hash: str = Field(max_length=64)
    # JSON records as they came; XML ones as {"xml": "<transaction>…"}.
    payload: dict[str, Any] = Field(sa_type=postgresql.JSONB)
    normalized_at: datetime | None = timestamp(nullable=True)
    normalizer_version: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)


class RawRecordKey(SQLModel, table=True):
    """Which row holds a connection's record of a given content: the once-only key of raw
    records, in a table of its own because a partitioned table's unique keys must contain its
    partition column. Ingestion claims a batch's keys in one statement before landing its
    rows; the trigger on `raw_record` claims the key of any row whose id holds none (migration
    0033). Kept when a month of raw records is archived and dropped, so a record seen before is
    never stored again. Attempts and dead letters refer to a raw record through it."""

    __tablename__ = "raw_record_key"

    connection_id: uuid.UUID = Field(primary_key=True)
    content_hash: str = Field(primary_key=True, max_length=64)
    raw_record_id: uuid.UUID = Field(unique=True)
    received_at: datetime = timestamp()


class DeadLetter(TenantOwned, table=True):
    """A raw record that could not be normalized, with the reason; the raw row stays."""

    __tablename__ = "dead_letter"
    __table_args__ = (sa.UniqueConstraint("raw_record_id", "normalizer_version"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    connection_id: uuid.UUID = Field(foreign_key="processor_connection.id", index=True)
    raw_record_id: uuid.UUID = Field(foreign_key="raw_record_key.raw_record_id")
    normalizer_version: int = Field(sa_type=sa.SmallInteger)
    reason: str = Field(max_length=2000)
    created_at: datetime = timestamp()
