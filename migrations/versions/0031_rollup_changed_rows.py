"""The payment rollup trigger skips updated rows whose contribution cannot have changed.

An `UPDATE` of payments subtracts each old row's contribution to the rollups and adds the new
row's. Many updates the retry engine makes (a decline rescheduled, a decision) leave every
column a contribution reads as it was: the two cancel out, and the trigger computed
both for nothing (the control-group function, the card join, the grouping; half of a recorded
group's write statement). The `UPDATE` branch of `recovery_rollup_payment` now reads, from
`new_rows` and `old_rows`, only the rows without an identical counterpart in the other table
(same id, and the same value in every column the contributions read), so the sums it adds
are exactly those it added before. The columns are the ones revision 0023's contributions
read (`p.<column>` in its text), taken from that file, which never changes; of the state they
read only whether it is open and which terminal state it is, so a rescheduled decline
(RETRYING to SCHEDULED, both open) or a decision is such an update; a claim is not (it counts
an attempt). The `INSERT` and `DELETE`
branches, the card and truncate functions are as 0023 made them.

Replacing a function takes no table lock (under a short lock timeout all the same). Down
restores 0023's function.

Revision ID: 0031_rollup_changed_rows
Revises: 0030_attempts_in_flight
Create Date: 2026-12-06 20:15:00.000000
"""

# Every SQL text below is built from revision 0023's constants only: no input reaches it.
# ruff: noqa: S608

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0031_rollup_changed_rows"
down_revision: str | None = "0030_attempts_in_flight"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
_DAY_ROLLUPS = Path(__file__).with_name("0023_recovery_day_rollups.py")


def _day_rollups() -> ModuleType:
    """Revision 0023, whose functions build the trigger functions' text."""
    spec = importlib.util.spec_from_file_location("rollup_functions_0023", _DAY_ROLLUPS)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {_DAY_ROLLUPS}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_columns(m: ModuleType) -> list[str]:
    """Every payment column a contribution reads, the card join's included."""
    text = m._contributions(m.PAYMENT_NEW, 1)
    return sorted(set(re.findall(r"\bp\.(\w+)", text)))


def _state_class(m: ModuleType, table: str) -> str:
    """What the contributions read of the state: whether it is open (not terminal) and which
    terminal state it is. Every open state (PENDING, SCHEDULED, RETRYING) reads the same."""
    text = m._contributions(m.PAYMENT_NEW, 1)
    uses = len(re.findall(r"\bp\.state\b", text))
    known = text.count(f"p.state NOT IN {m.TERMINAL}") + text.count("p.state = 'RECOVERED'")
    if uses != known:
        raise RuntimeError("revision 0023's contributions read the state in another way")
    return f"CASE WHEN {table}.state IN {m.TERMINAL} THEN {table}.state END"


def _inputs(m: ModuleType, table: str) -> str:
    """A row's contribution inputs, as one row value."""
    return ", ".join(
        _state_class(m, table) if c == "state" else f"{table}.{c}" for c in _read_columns(m)
    )


def _changed_rows(m: ModuleType, mine: str, other: str) -> str:
    """Rows of transition table `mine` with no row of `other` of the same id and contribution
    inputs, as `p` with its card as `c` (the sources of 0023's contributions)."""
    return (
        f"(SELECT x.* FROM {mine} x WHERE NOT EXISTS (SELECT 1 FROM {other} y "
        f"WHERE y.id = x.id AND ({_inputs(m, 'x')}) IS NOT DISTINCT FROM ({_inputs(m, 'y')}))) p "
        "LEFT JOIN card_credential c ON c.id = p.card_id"
    )


def _payment_function(m: ModuleType) -> str:
    changed_new = _changed_rows(m, "new_rows", "old_rows")
    changed_old = _changed_rows(m, "old_rows", "new_rows")
    lock = m._lock_shared
    return f"""
CREATE OR REPLACE FUNCTION recovery_rollup_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {lock("SELECT DISTINCT merchant_id FROM new_rows")}
    {m._apply(m._contributions(m.PAYMENT_NEW, 1), days=True)}
  ELSIF TG_OP = 'DELETE' THEN
    {lock("SELECT DISTINCT merchant_id FROM old_rows")}
    {m._apply(m._contributions(m.PAYMENT_OLD, -1), days=True)}
  ELSE
    {lock("SELECT merchant_id FROM new_rows UNION SELECT merchant_id FROM old_rows")}
    {m._apply(m._contributions(changed_new, 1), m._contributions(changed_old, -1), days=True)}
  END IF;
  RETURN NULL;
END
$$"""


def upgrade() -> None:
    # A function being replaced waits for no table; the timeout bounds any wait there is.
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(_payment_function(_day_rollups()))


def downgrade() -> None:
    payment, _card, _truncate = _day_rollups()._trigger_functions(days=True)
    with short_lock_timeout(LOCK_TIMEOUT):
        op.execute(payment)
