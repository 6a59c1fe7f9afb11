"""Retry policy control-group share: `retry_policy.control_group_percent` (0-50, default 10),
and the recovery rollups' control arm drawn with the share of the policy each payment was last
decided under.

The column has a constant server default, so adding it changes only the catalog (no rewrite);
every existing policy reads 10, the share in force until now. Its range check is validated
under the same brief lock the new column takes (the table holds a few rows per merchant). Both
ALTER TABLE statements wait at most `lock_timeout` for their lock.

The rollup triggers called `recovery_control_group(merchant, payment)` with a fixed 10%; they
now pass the payment's `policy_version`, and the new overload looks that version's share up
(policy versions are never updated, so a payment's arm is a function of its row, as the
triggers' subtract-old/add-new bookkeeping needs; an undecided payment counts at 10%). Every
existing policy has 10%, so no existing rollup row changes. The trigger functions are replaced
in place (no table lock).

Revision ID: 0015_policy_control_group
Revises: 0014_webhook_delivery_status
Create Date: 2026-12-06 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0015_policy_control_group"
down_revision: str | None = "0014_webhook_delivery_status"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
DEFAULT_PERCENT = 10
# Frozen copy of app.retry.schedule.in_control_group's threshold for each percent 0-50: the
# first 64 bits of the SHA-256 must compare below `percent / 100 * 2**64`.
THRESHOLDS = [format(int(p / 100 * 2**64), "016x") for p in range(51)]
OLD_CALL = "recovery_control_group(p.merchant_id, p.id)"
NEW_CALL = "recovery_control_group(p.merchant_id, p.id, p.policy_version)"
TRIGGER_FUNCTIONS = ("recovery_rollup_payment()", "recovery_rollup_card()")

CONTROL_GROUP_AT_VERSION = f"""
CREATE FUNCTION recovery_control_group(merchant uuid, payment uuid, policy_version integer)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT ('x' || substr(encode(sha256(convert_to(
      merchant::text || chr(31) || payment::text, 'UTF8')), 'hex'), 1, 16))::bit(64)
    < ('x' || (ARRAY[{", ".join(f"'{t}'" for t in THRESHOLDS)}])[coalesce(
      (SELECT r.control_group_percent FROM retry_policy r
        WHERE r.merchant_id = merchant AND r.version = policy_version),
      {DEFAULT_PERCENT}) + 1])::bit(64)
$$;
"""  # noqa: S608 - built from this module's constants, no input


def _locked(*statements: str) -> None:
    """Run the statements under the short lock timeout, then give the transaction back the
    timeout it had."""
    with short_lock_timeout(LOCK_TIMEOUT):
        for statement in statements:
            op.execute(statement)


def _rewrite_triggers(old: str, new: str) -> None:
    """Replace each rollup trigger function by its own definition with `old` calls as `new`."""
    for function in TRIGGER_FUNCTIONS:
        op.execute(
            sa.text(
                "DO $do$ BEGIN EXECUTE replace(pg_get_functiondef("
                f"'{function}'::regprocedure), '{old}', '{new}'); END $do$"
            )
        )


def upgrade() -> None:
    _locked(
        "ALTER TABLE retry_policy ADD COLUMN control_group_percent SMALLINT "
        f"DEFAULT {DEFAULT_PERCENT} NOT NULL",
        "ALTER TABLE retry_policy ADD CONSTRAINT ck_retry_policy_control_group_percent_range "
        "CHECK (control_group_percent BETWEEN 0 AND 50) NOT VALID",
    )
    op.execute(
        "ALTER TABLE retry_policy VALIDATE CONSTRAINT ck_retry_policy_control_group_percent_range"
    )
    op.execute(CONTROL_GROUP_AT_VERSION)
    _rewrite_triggers(OLD_CALL, NEW_CALL)


def downgrade() -> None:
    # The old triggers count every payment at 10%: payments already counted under another share
    # would be taken off the wrong arm. Refuse rather than corrupt the rollups.
    others = op.get_bind().execute(
        sa.text(
            "SELECT count(*) FROM retry_policy WHERE control_group_percent <> :share"
        ).bindparams(share=DEFAULT_PERCENT)
    )
    if others.scalar_one():
        raise RuntimeError(
            f"retry policy versions with a control-group share other than {DEFAULT_PERCENT}% "
            "exist: their payments' rollup arms cannot be kept by the older triggers"
        )
    _rewrite_triggers(NEW_CALL, OLD_CALL)
    op.execute("DROP FUNCTION recovery_control_group(uuid, uuid, integer)")
    _locked("ALTER TABLE retry_policy DROP COLUMN control_group_percent")
