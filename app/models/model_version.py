"""Trained retry-timing models (global, not tenant-owned) and the decisions they made."""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from app.enums import ModelStatus
from app.models.base import TenantOwned, enum_type, new_id, timestamp

# What a model was trained on, as `model_version.source` stores it: the portal's stored history,
# or a simulated world of N failures ("simulated:N"); written and read only through these.
HISTORY_SOURCE = "history"
_SIMULATED_PREFIX = "simulated:"

# `model_decision.role`: the decision the retry engine received, or one scored alongside it.
ROLE_ACTING = "acting"
ROLE_SHADOW = "shadow"


def simulated_source(failures: int) -> str:
    """The source of a model trained on `failures` simulated failures."""
    return f"{_SIMULATED_PREFIX}{failures}"


def simulated_failures(source: str) -> int | None:
    """How many simulated failures a model with this source was trained on; None when it was
    trained on stored history."""
    if not source.startswith(_SIMULATED_PREFIX):
        return None
    return int(source.removeprefix(_SIMULATED_PREFIX))


class ModelVersion(SQLModel, table=True):
    """One trained model: its data window, parameters, metrics, artifact bytes and status.

    Models serve every merchant, so the table belongs to no merchant; only support reads it.
    """

    __tablename__ = "model_version"
    __table_args__ = (
        # At most one champion acts at a time; the database holds the line under concurrency.
        sa.Index(
            "uq_model_version_champion",
            "status",
            unique=True,
            postgresql_where=sa.text("status = 'champion'"),
        ),
        sa.Index("ix_model_version_trained", "trained_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    trained_at: datetime = timestamp()
    data_start: datetime = timestamp()
    data_end: datetime = timestamp()
    feature_list: str = Field(max_length=64)
    source: str = Field(max_length=32)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_type=postgresql.JSONB)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=postgresql.JSONB)
    # The promotion gate's latest verdict against the champion of the time (None: not run).
    gate: dict[str, Any] | None = Field(default=None, sa_type=postgresql.JSONB, nullable=True)
    artifact: bytes = Field(sa_type=sa.LargeBinary)
    status: ModelStatus = Field(sa_type=enum_type(ModelStatus))
    promoted_at: datetime | None = timestamp(nullable=True)
    promoted_by: str | None = Field(default=None, max_length=255)
    reason: str | None = Field(default=None, max_length=1000)


class ModelDecision(TenantOwned, table=True):
    """A retry decision the model path made for a payment: acting, or a shadow's for comparison.

    The acting row keeps the explanation shown with the payment's decision; a shadow row keeps
    what another model would have chosen at the same moment, without acting on it. Rows are only
    ever inserted, into monthly partitions by `decided_at` (app/models/partitioning.py), hence the
    key (id, decided_at).
    """

    __tablename__ = "model_decision"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", "decided_at"),
        sa.Index("ix_model_decision_payment_at", "payment_id", "decided_at"),
        # One model's decisions in one role, newest first: the shadow comparison reads a
        # bounded window of them (app/services/model_comparison.py).
        sa.Index("ix_model_decision_model_role_at", "model_version_id", "role", "decided_at"),
        {"postgresql_partition_by": "RANGE (decided_at)"},
    )

    id: uuid.UUID = Field(default_factory=new_id, nullable=False)
    payment_id: uuid.UUID = Field(foreign_key="payment.id")
    model_version_id: uuid.UUID | None = Field(
        default=None, foreign_key="model_version.id", nullable=True
    )
    # "acting" (the decision the engine received) or "shadow" (scored alongside, not acted on).
    role: str = Field(max_length=16)
    # "model", "fallback" (fixed schedule) or "stop".
    source: str = Field(max_length=16)
    decided_at: datetime = timestamp()
    chosen_at: datetime | None = timestamp(nullable=True)
    probability: float | None = Field(default=None, nullable=True)
    expected_recovered_minor: int = Field(default=0, sa_type=sa.BigInteger)
    reason: str = Field(max_length=1000)
    # Top feature contributions: [{"feature", "text", "log_odds"}], plain words first.
    explanation: list[dict[str, Any]] = Field(default_factory=list, sa_type=postgresql.JSONB)
