"""Model decisions by model, role and time: `ix_model_decision_model_role_at` replaces the
single-column `ix_model_decision_model_version_id`.

The shadow comparison reads the newest decisions one model made in one role; the old index
found every row of the model (a champion's acting decisions included, by the million) and left
the filtering and sorting to the executor. The new index serves what the old one served
(lookups by model, the foreign key's checks) as its leading column, so the old one goes.

Both indexes are built and dropped concurrently, outside the migration's transaction:
`model_decision` takes a row per decision and a plain build would block the decide job's
inserts meanwhile. An interrupted concurrent build leaves an invalid index of the same name
behind, so each build drops it first: the migration can simply be run again.

Revision ID: 0016_model_decision_by_model
Revises: 0015_policy_control_group
Create Date: 2026-12-08 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_model_decision_by_model"
down_revision: str | None = "0015_policy_control_group"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "model_decision"
NEW = "ix_model_decision_model_role_at"
OLD = "ix_model_decision_model_version_id"


def _drop(name: str) -> None:
    op.drop_index(name, table_name=TABLE, postgresql_concurrently=True, if_exists=True)


def _build(name: str, columns: list[str]) -> None:
    _drop(name)
    op.create_index(name, TABLE, columns, unique=False, postgresql_concurrently=True)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _build(NEW, ["model_version_id", "role", "decided_at"])
        _drop(OLD)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _build(OLD, ["model_version_id"])
        _drop(NEW)
