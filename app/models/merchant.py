"""Merchant: the tenant."""

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

from app.enums import MerchantStatus
from app.models.base import enum_type, new_id, timestamp


class Merchant(SQLModel, table=True):
    """A business whose failed payments the portal recovers."""

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(max_length=200)
    status: MerchantStatus = Field(default=MerchantStatus.ACTIVE, sa_type=enum_type(MerchantStatus))
    created_at: datetime = timestamp()
