"""The audit log: every configuration change, with who, when, before, after and why."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field

from app.models.base import TenantOwned, new_id, timestamp


class AuditLog(TenantOwned, table=True):
    """One configuration change; rows are only ever inserted."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_merchant_created", "merchant_id", "created_at", "id"),)

    # Changes that belong to no merchant (support keys, new merchants' keys) carry none;
    # scoped sessions filter with `merchant_id IN (...)`, which never matches NULL.
    merchant_id: uuid.UUID | None = Field(  # type: ignore[assignment]
        default=None, foreign_key="merchant.id", index=True, nullable=True
    )
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    actor: str = Field(max_length=255)
    actor_key_id: uuid.UUID | None = Field(default=None, nullable=True)
    action: str = Field(max_length=64)
    entity_type: str = Field(max_length=64)
    entity_id: str = Field(max_length=64)
    before: dict[str, Any] | None = Field(default=None, sa_type=postgresql.JSONB, nullable=True)
    after: dict[str, Any] | None = Field(default=None, sa_type=postgresql.JSONB, nullable=True)
    reason: str | None = Field(default=None, max_length=1000)
    created_at: datetime = timestamp()
