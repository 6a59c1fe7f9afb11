"""Recovery rollups: per-quarter-hour sums of payments, kept current by database triggers."""

import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from app.models.base import TenantOwned, merchant_key, timestamp

# Upper edges (seconds, exclusive) of the time-to-recover histogram; the last bucket is open.
# Migration 0005 copies these into SQL; a test checks both agree.
TTR_EDGES_SECONDS: tuple[int, ...] = tuple(
    h * 3600
    for h in (
        1, 2, 4, 8, 12, 18, 24, 36, 48, 72, 96, 120, 144, 168, 192, 216, 240,
        288, 336, 408, 504, 600, 720, 960, 1440, 2160,
    )
)  # fmt: skip
TTR_BUCKETS = len(TTR_EDGES_SECONDS) + 1

# Rollup rows are keyed by the quarter hour (UTC) of a payment's first failure: every current
# IANA offset is a multiple of 15 minutes, so local days, weeks and months are unions of buckets.
BUCKET_SECONDS = 900

# Summed columns, in the order the trigger and the recomputation fill them.
MEASURES: tuple[str, ...] = (
    "failed_count",
    "failed_amount",
    "open_count",
    "open_amount",
    "recovered_portal_count",
    "recovered_portal_amount",
    "recovered_processor_count",
    "recovered_processor_amount",
    "recovered_billing_system_count",
    "recovered_billing_system_amount",
    "recovered_customer_count",
    "recovered_customer_amount",
    "recovered_retries",
    "model_count",
)


def _measure() -> int:
    return Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})  # type: ignore[no-any-return]


class RollupSums(SQLModel):
    """The sums every rollup row carries (`MEASURES`, then the time-to-recover histogram)."""

    failed_count: int = _measure()
    failed_amount: int = _measure()
    # Not yet terminal: still in recovery.
    open_count: int = _measure()
    open_amount: int = _measure()
    recovered_portal_count: int = _measure()
    recovered_portal_amount: int = _measure()
    recovered_processor_count: int = _measure()
    recovered_processor_amount: int = _measure()
    recovered_billing_system_count: int = _measure()
    recovered_billing_system_amount: int = _measure()
    recovered_customer_count: int = _measure()
    recovered_customer_amount: int = _measure()
    # Attempts after the first failure on recovered payments.
    recovered_retries: int = _measure()
    # Payments whose latest retry decision came from the model.
    model_count: int = _measure()
    # Recovered payments by time to recover (`TTR_EDGES_SECONDS`), one slot per bucket.
    ttr_histogram: list[int] = Field(
        default_factory=lambda: [0] * TTR_BUCKETS,
        sa_type=postgresql.ARRAY(sa.BigInteger),
    )


class BreakdownSums(RollupSums):
    """A day or month rollup row's key beside its date and sums: the payments sharing one
    value of one breakdown dimension (`DAY_DIMENSIONS`) in one currency and eligibility."""

    currency: str = Field(max_length=3)
    retryable: bool
    dimension: str = Field(max_length=16)
    value: str = Field(max_length=32)


class RecoveryRollup(TenantOwned, RollupSums, table=True):
    """Sums over the payments sharing one key; adjusted by triggers on `payment` and
    `card_credential` in the statement that changes them (migration 0005), never by the app."""

    __tablename__ = "recovery_rollup"
    __table_args__ = (
        sa.PrimaryKeyConstraint(
            "merchant_id",
            "bucket_start",
            "currency",
            "processor",
            "decline_category",
            "funding",
            "control_group",
            "retryable",
        ),
    )

    bucket_start: datetime = timestamp()
    currency: str = Field(max_length=3)
    processor: str = Field(max_length=32)
    decline_category: str = Field(max_length=32)
    # The card's funding at the time of reading; "unknown" when the payment has no card.
    funding: str = Field(max_length=32)
    # The retry engine's stable control group (`app.retry.schedule.in_control_group`), drawn
    # with the share of the policy version the payment was last decided under.
    control_group: bool
    # The first failure's verdict: the eligible population.
    retryable: bool


# The breakdowns a day rollup row belongs to: each payment counts once under every dimension,
# so the rows of one dimension add up to the day's total. "control_group" holds "true"/"false".
DAY_DIMENSIONS: tuple[str, ...] = ("control_group", "decline_category", "processor", "funding")


class RecoveryDayZone(TenantOwned, table=True):
    """The time zone a merchant's day rollups are kept in: its current retry policy's,
    recorded by the trigger that rebuilds them when a new policy version changes it
    (migration 0021)."""

    __tablename__ = "recovery_day_zone"

    merchant_id: uuid.UUID = Field(foreign_key="merchant.id", primary_key=True)
    timezone: str = Field(max_length=64)


class RecoveryDayRollup(TenantOwned, BreakdownSums, table=True):
    """Sums over one local day (in the merchant's `RecoveryDayZone`) of the payments sharing
    one value of one breakdown dimension (`DAY_DIMENSIONS`): the quarter-hour rows' sums
    regrouped, so a range of whole days reads a few rows per day and breakdown. Adjusted by
    the same statement triggers as `RecoveryRollup`, in the same statement (migration 0021)."""

    __tablename__ = "recovery_day_rollup"
    __table_args__ = (
        sa.PrimaryKeyConstraint(
            "merchant_id", "day", "currency", "retryable", "dimension", "value"
        ),
    )

    merchant_id: uuid.UUID = merchant_key()
    # The local date (in the merchant's zone) of the quarter hour of the first failure.
    day: date


class RecoveryMonthZone(TenantOwned, table=True):
    """The time zone a merchant's month rollups are kept in: its day rollups' zone, recorded
    when its month rows are rebuilt from its day rows (migration 0032). A merchant it does not
    list has no month rows to read."""

    __tablename__ = "recovery_month_zone"

    merchant_id: uuid.UUID = Field(foreign_key="merchant.id", primary_key=True)
    timezone: str = Field(max_length=64)


class RecoveryMonthRollup(TenantOwned, BreakdownSums, table=True):
    """The day rollup's sums regrouped by local month (`month`: its first day, in the
    merchant's `RecoveryMonthZone`), so the whole months of a range read a few rows per month
    and breakdown. Adjusted by the same statement triggers as `RecoveryRollup`, in the same
    statement (migration 0032)."""

    __tablename__ = "recovery_month_rollup"
    __table_args__ = (
        sa.PrimaryKeyConstraint(
            "merchant_id", "month", "currency", "retryable", "dimension", "value"
        ),
    )

    merchant_id: uuid.UUID = merchant_key()
    month: date


__all__ = [
    "BUCKET_SECONDS",
    "DAY_DIMENSIONS",
    "MEASURES",
    "TTR_BUCKETS",
    "TTR_EDGES_SECONDS",
    "BreakdownSums",
    "RecoveryDayRollup",
    "RecoveryDayZone",
    "RecoveryMonthRollup",
    "RecoveryMonthZone",
    "RecoveryRollup",
    "RollupSums",
]
