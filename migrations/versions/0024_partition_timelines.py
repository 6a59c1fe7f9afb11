"""The payment timeline and the model's decisions become monthly range partitions.

Both grow with every decision and state change and are never updated. Partitioned by their time
column (`payment_transition.at`, `model_decision.decided_at`), a month's rows can be archived and
dropped as a whole when a retention window is set (none is by default: the timeline is what a
payment's page shows), lookups by time touch only the months they span, and vacuum and index
maintenance work on one month at a time.

The existing rows stay where they are: each table becomes the first partition of a new
partitioned table of the same name (see `migrations/partitioning.py` for how this avoids a long
lock). Both tables' primary keys become (id, time column), which a partitioned table requires;
no other table refers to them.

Revision ID: 0024_partition_timelines
Revises: 0023_recovery_day_rollups
Create Date: 2026-12-06 14:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from app.models.partitioning import MODEL_DECISION, PAYMENT_TRANSITION
from migrations.partitioning import Shape, prepare, swap, unpartition

revision: str = "0024_partition_timelines"
down_revision: str | None = "0023_recovery_day_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHAPES = (
    Shape(
        PAYMENT_TRANSITION,
        indexes=(
            ("ix_payment_transition_merchant_id", "(merchant_id)"),
            ("ix_payment_transition_payment_at", "(payment_id, at, seq)"),
        ),
        foreign_keys=(
            ("fk_payment_transition_merchant_id_merchant", "merchant_id", "merchant"),
            ("fk_payment_transition_payment_id_payment", "payment_id", "payment"),
        ),
    ),
    Shape(
        MODEL_DECISION,
        indexes=(
            ("ix_model_decision_merchant_id", "(merchant_id)"),
            ("ix_model_decision_model_role_at", "(model_version_id, role, decided_at)"),
            ("ix_model_decision_payment_at", "(payment_id, decided_at)"),
        ),
        foreign_keys=(
            ("fk_model_decision_merchant_id_merchant", "merchant_id", "merchant"),
            (
                "fk_model_decision_model_version_id_model_version",
                "model_version_id",
                "model_version",
            ),
            ("fk_model_decision_payment_id_payment", "payment_id", "payment"),
        ),
    ),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for shape in SHAPES:
            prepare(shape)
    for shape in SHAPES:
        swap(shape)


def downgrade() -> None:
    for shape in reversed(SHAPES):
        unpartition(shape)
