"""One spelling of the decline columns: `payment_attempt` takes the `decline_*` names that
`payment` already uses.

    raw_decline_code      -> decline_raw_code
    network_decline_code  -> decline_network_code
    network_advice_code   -> decline_network_advice_code

A rename only changes the catalog (no table rewrite, no scan), but it takes an ACCESS
EXCLUSIVE lock on `payment_attempt` for that instant. Waiting for that lock behind a long
transaction would queue every later query of the table behind the migration, so it waits at
most `lock_timeout` and otherwise fails cleanly, changing nothing: run it again. No index or
constraint is named after these columns, so no other name changes.

Rolling deploy: the code of this release reads and writes the new names only, and the code
of the previous release the old names only, so the two must not run against the database at
the same time:
1. stop the workers (SIGTERM: they finish or re-queue their running jobs) and the API
   processes of the previous release;
2. run `portal migrate`;
3. start the API processes and the workers of this release.
A rollback runs `alembic downgrade 0012_webhook_previous_secret` between the same two steps,
then starts the previous release.

Revision ID: 0013_attempt_decline_columns
Revises: 0012_webhook_previous_secret
Create Date: 2026-12-08 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0013_attempt_decline_columns"
down_revision: str | None = "0012_webhook_previous_secret"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMED = (
    ("raw_decline_code", "decline_raw_code"),
    ("network_decline_code", "decline_network_code"),
    ("network_advice_code", "decline_network_advice_code"),
)
# Longer than the rename itself ever takes; short enough that traffic queued behind the
# migration's lock request waits no longer than this.
LOCK_TIMEOUT = "3s"


def _rename(pairs: Sequence[tuple[str, str]]) -> None:
    """Rename under the short lock timeout, then give the transaction back the timeout it
    had: the revisions run after this one in the same transaction are not bound by it."""
    with short_lock_timeout(LOCK_TIMEOUT):
        for old, new in pairs:
            op.alter_column("payment_attempt", old, new_column_name=new)


def upgrade() -> None:
    _rename(RENAMED)


def downgrade() -> None:
    _rename([(new, old) for old, new in RENAMED])
