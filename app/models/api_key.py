"""API keys (stored hashed) and the merchants each key may see."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from app.enums import ApiKeyScope, Role
from app.models.base import enum_type, new_id, timestamp


class ApiKey(SQLModel, table=True):
    """A bearer token's record: only its SHA-256 hash and a display prefix are kept."""

    __tablename__ = "api_key"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    role: Role = Field(sa_type=enum_type(Role))
    created_at: datetime = timestamp()
    last_used_at: datetime | None = timestamp(nullable=True)
    revoked_at: datetime | None = timestamp(nullable=True)
    # What the key may do: read, and write (every mutation). Keys made before scopes existed
    # have both.
    scopes: list[str] = Field(
        default_factory=lambda: [s.value for s in ApiKeyScope],
        sa_type=postgresql.ARRAY(sa.String(length=16)),
        sa_column_kwargs={"server_default": sa.text("'{read,write}'")},
    )
    # When the key stops authenticating; null never.
    expires_at: datetime | None = timestamp(nullable=True)


class ApiKeyMerchant(SQLModel, table=True):
    """A grant: this key may see this merchant (merchant and partner keys)."""

    __tablename__ = "api_key_merchant"

    api_key_id: uuid.UUID = Field(foreign_key="api_key.id", primary_key=True, ondelete="CASCADE")
    merchant_id: uuid.UUID = Field(foreign_key="merchant.id", primary_key=True, index=True)
