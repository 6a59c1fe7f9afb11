"""Retry policy: one row per version per merchant; the highest version is current."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field

from app.enums import EndAction, RetryStrategy
from app.models.base import TenantOwned, enum_type, new_id, timestamp


class RetryPolicy(TenantOwned, table=True):
    """A version of a merchant's retry configuration; rows are never updated, only added."""

    __tablename__ = "retry_policy"
    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "version"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.CheckConstraint("max_attempts BETWEEN 1 AND 15", name="max_attempts_range"),
        sa.CheckConstraint("window_days BETWEEN 1 AND 60", name="window_days_range"),
        sa.CheckConstraint(
            "(quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)", name="quiet_hours_pair"
        ),
        sa.CheckConstraint(
            "control_group_percent BETWEEN 0 AND 50", name="control_group_percent_range"
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    version: int
    enabled: bool = True
    max_attempts: int = Field(sa_type=sa.SmallInteger)
    window_days: int = Field(sa_type=sa.SmallInteger)
    min_hours_between_attempts: int = Field(sa_type=sa.SmallInteger)
    quiet_hours_start: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    quiet_hours_end: int | None = Field(default=None, sa_type=sa.SmallInteger, nullable=True)
    timezone: str = Field(max_length=64)
    excluded_decline_categories: list[str] = Field(
        default_factory=list, sa_type=postgresql.ARRAY(sa.String(32))
    )
    strategy: RetryStrategy = Field(sa_type=enum_type(RetryStrategy))
    fixed_schedule_days: list[int] = Field(
        default_factory=list, sa_type=postgresql.ARRAY(sa.SmallInteger)
    )
    end_action: EndAction = Field(sa_type=enum_type(EndAction))
    # Percent of a model policy's payments kept on the fixed schedule, the uplift's control.
    control_group_percent: int = Field(
        default=10, sa_type=sa.SmallInteger, sa_column_kwargs={"server_default": "10"}
    )
    created_at: datetime = timestamp()
    created_by: str = Field(max_length=255)
    reason: str | None = Field(default=None, max_length=1000)
