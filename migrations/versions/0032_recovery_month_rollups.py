"""Recovery month rollups: the day rollups regrouped by the merchant's local month, kept by
the same statement triggers.

`recoveryStats` for 90 days summed about 6,700 day rows for a merchant with 120,000 payments a
year (every breakdown value of every day), most of the statement's time. `recovery_month_rollup`
holds, per merchant, local month (its first day, in `recovery_month_zone.timezone`, the zone of
the merchant's day rollups), currency, eligibility, dimension and value, the same sums: whole
months of a range read a few rows per month and breakdown; the days of the partial months at its
edges read day rows, and the partial days quarter hours, as before.

- The payment and card trigger functions add each statement's grouped changes to the quarter-
  hour, day and month rollups in one statement (data-modifying CTEs), under the same shared
  per-merchant advisory lock as 0023's.
- `recovery_month_rebuild(merchant)` takes that merchant's lock exclusively and refills its
  month rows from its day rows (in the day rows' zone; none when it has no day rows).
  `recovery_day_rebuild` (a policy version changing the zone) now ends with it, so the day and
  month rows are rebuilt together, in the same transaction.
- An `UPDATE` still adds only the rows whose contribution inputs changed (revision 0031's
  filter, rebuilt here from this file's copy of the contributions).
- A merchant's month rows are read only when `recovery_month_zone` lists it in the day rows'
  zone: until its backfill, a merchant's statistics read its day rows as before.

Online: the new tables are empty when the functions are replaced (no table lock: functions
only); the triggers then keep the month rows of every merchant that has a month zone row, and
none has one yet. The backfill then rebuilds one merchant per transaction (`COMMIT` after each,
in an autocommit block), each blocking only that merchant's payment writes for the time of
regrouping its day rows (a few hundred per month).

Revision ID: 0032_recovery_month_rollups
Revises: 0031_rollup_changed_rows
Create Date: 2026-12-06 20:00:00.000000
"""

# Every SQL text below is built from this module's constants only: no input reaches it.
# ruff: noqa: S608

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.locks import short_lock_timeout

revision: str = "0032_recovery_month_rollups"
down_revision: str | None = "0031_rollup_changed_rows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_TIMEOUT = "5s"
# Frozen copies of the rollups' shape as of this revision (see 0005, 0015 and 0023).
TTR_BUCKETS = 27
TERMINAL = "('RECOVERED', 'EXHAUSTED', 'NOT_RETRYABLE', 'CANCELED')"
ACTORS = ("portal", "processor", "billing_system", "customer")
KEYS = (
    "merchant_id",
    "bucket_start",
    "currency",
    "processor",
    "decline_category",
    "funding",
    "control_group",
    "retryable",
)
DAY_KEYS = ("merchant_id", "day", "currency", "retryable", "dimension", "value")
MEASURES = (
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
ZEROS = f"array_fill(0::bigint, ARRAY[{TTR_BUCKETS}])"
# The class of the day rollups' advisory locks (the object is hashtext of the merchant id);
# the two-integer form is a key space apart from the retry engine's one-bigint locks.
LOCK_CLASS = 2021
# One row per dimension of a quarter-hour row `d`: the value it counts under.
DIMENSIONS = (
    "CROSS JOIN LATERAL (VALUES ('control_group', d.control_group::text), "
    "('decline_category', d.decline_category), ('processor', d.processor), "
    "('funding', d.funding)) AS v(dimension, value)"
)
DAY_OF = "(d.bucket_start AT TIME ZONE {zone})::date"


def _hist_sum(expression: str) -> str:
    """The element-wise sum of a histogram column, as a bigint array."""
    parts = ", ".join(f"coalesce(sum(({expression})[{i}]), 0)" for i in range(1, TTR_BUCKETS + 1))
    return f"ARRAY[{parts}]::bigint[]"


def _changed(prefix: str = "") -> str:
    """True for a group whose sums are not all zero."""
    return " OR ".join(
        [f"sum({prefix}{m}) <> 0" for m in MEASURES]
        + [f"{_hist_sum(prefix + 'ttr_histogram')} <> {ZEROS}"]
    )


def _contributions(source: str, sign: int) -> str:
    """Each payment's signed contribution to its quarter-hour row; `source` binds `p`, `c`."""
    s = f"({sign})::bigint"
    recovered = "(p.state = 'RECOVERED' AND p.recovered_by IS NOT NULL)"
    open_ = f"p.state NOT IN {TERMINAL}"
    actor_columns = []
    for actor in ACTORS:
        hit = f"{recovered} AND p.recovered_by = '{actor}'"
        actor_columns += [
            f"CASE WHEN {hit} THEN {s} ELSE 0 END AS recovered_{actor}_count",
            f"CASE WHEN {hit} THEN {s} * p.amount_minor ELSE 0 END AS recovered_{actor}_amount",
        ]
    columns = [
        "p.merchant_id",
        "date_bin('15 minutes', p.first_failed_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
        " AS bucket_start",
        "p.currency",
        "p.processor",
        "p.decline_category",
        "coalesce(c.funding, 'unknown') AS funding",
        "recovery_control_group(p.merchant_id, p.id, p.policy_version) AS control_group",
        "p.decline_retryable AS retryable",
        f"{s} AS failed_count",
        f"{s} * p.amount_minor AS failed_amount",
        f"CASE WHEN {open_} THEN {s} ELSE 0 END AS open_count",
        f"CASE WHEN {open_} THEN {s} * p.amount_minor ELSE 0 END AS open_amount",
        *actor_columns,
        f"CASE WHEN {recovered} THEN {s} * greatest(p.attempt_count - 1, 0) ELSE 0 END"
        " AS recovered_retries",
        f"CASE WHEN p.decision_strategy = 'model' THEN {s} ELSE 0 END AS model_count",
        "recovery_ttr_vector(CASE WHEN "
        f"{recovered} AND p.recovered_at IS NOT NULL THEN recovery_ttr_bucket("
        "extract(epoch FROM p.recovered_at - p.first_failed_at)::double precision) END, "
        f"{sign}) AS ttr_histogram",
    ]
    return f"SELECT {', '.join(columns)} FROM {source}"


def _upsert(table: str, keys: Sequence[str], source: str) -> str:
    """Add `source`'s rows (keys, measures, histogram) to `table`, in key order."""
    # Element by element: `recovery_hist_add` (unnest, then an ordered array) costs tens of
    # microseconds a row, and the day rollup updates four rows per quarter-hour row.
    added = ", ".join(
        f"r.ttr_histogram[{i}] + excluded.ttr_histogram[{i}]" for i in range(1, TTR_BUCKETS + 1)
    )
    updates = ", ".join(
        [f"{m} = r.{m} + excluded.{m}" for m in MEASURES]
        + [f"ttr_histogram = ARRAY[{added}]::bigint[]"]
    )
    columns = f"{', '.join(keys)}, {', '.join(MEASURES)}, ttr_histogram"
    return (
        f"INSERT INTO {table} AS r ({columns}) {source} "
        f"ON CONFLICT ON CONSTRAINT pk_{table} DO UPDATE SET {updates}"
    )


def _day_rows(source: str, zone: str, where: str = "true") -> str:
    """`source`'s quarter-hour rows (as `d`) regrouped by local day and dimension."""
    day = DAY_OF.format(zone=zone)
    sums = ", ".join(f"sum(d.{m})" for m in MEASURES)
    return (
        f"SELECT d.merchant_id, {day}, d.currency, d.retryable, v.dimension, v.value, {sums}, "
        f"{_hist_sum('d.ttr_histogram')} FROM {source} {DIMENSIONS} WHERE {where} "
        f"GROUP BY 1, 2, 3, 4, 5, 6 HAVING {_changed('d.')} ORDER BY 1, 2, 3, 4, 5, 6"
    )


def _lock_shared(merchants: str) -> str:
    """Take the day rollups' shared lock of every merchant `merchants` lists."""
    return (
        f"PERFORM pg_advisory_xact_lock_shared({LOCK_CLASS}, hashtext(m::text)) "
        f"FROM ({merchants}) AS l(m) ORDER BY m;"
    )


MONTH_KEYS = ("merchant_id", "month", "currency", "retryable", "dimension", "value")
MONTH_OF = "date_trunc('month', d.bucket_start AT TIME ZONE {zone})::date"


def _month_rows(source: str, zone: str) -> str:
    """`source`'s quarter-hour rows (as `d`) regrouped by local month and dimension."""
    month = MONTH_OF.format(zone=zone)
    sums = ", ".join(f"sum(d.{m})" for m in MEASURES)
    return (
        f"SELECT d.merchant_id, {month}, d.currency, d.retryable, v.dimension, v.value, {sums}, "
        f"{_hist_sum('d.ttr_histogram')} FROM {source} {DIMENSIONS} "
        f"GROUP BY 1, 2, 3, 4, 5, 6 HAVING {_changed('d.')} ORDER BY 1, 2, 3, 4, 5, 6"
    )


def _apply(*parts: str, months: bool) -> str:
    """Add the grouped contributions to the quarter-hour rollup, to the day rollup of merchants
    with a day zone and, with `months`, to the month rollup of merchants with a month zone, in
    one statement; groups that cancel out are skipped."""
    keys = ", ".join(KEYS)
    sums = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
    grouped = (
        f"SELECT {keys}, {sums}, {_hist_sum('ttr_histogram')} AS ttr_histogram "
        f"FROM ({' UNION ALL '.join(parts)}) c GROUP BY {keys} HAVING {_changed()}"
    )
    quarter = _upsert("recovery_rollup", KEYS, f"SELECT * FROM d ORDER BY {keys}")
    day = _upsert(
        "recovery_day_rollup",
        DAY_KEYS,
        _day_rows("d JOIN recovery_day_zone z ON z.merchant_id = d.merchant_id", "z.timezone"),
    )
    if not months:
        return f"WITH d AS ({grouped}), q AS ({quarter}) {day};"
    month = _upsert(
        "recovery_month_rollup",
        MONTH_KEYS,
        _month_rows("d JOIN recovery_month_zone z ON z.merchant_id = d.merchant_id", "z.timezone"),
    )
    return f"WITH d AS ({grouped}), q AS ({quarter}), y AS ({day}) {month};"


PAYMENT_NEW = "new_rows p LEFT JOIN card_credential c ON c.id = p.card_id"
PAYMENT_OLD = "old_rows p LEFT JOIN card_credential c ON c.id = p.card_id"
CARD_NEW = "payment p JOIN new_cards c ON c.id = p.card_id"
CARD_OLD = "payment p JOIN old_cards c ON c.id = p.card_id"


def _read_columns() -> list[str]:
    """Every payment column a contribution reads, the card join's included."""
    return sorted(set(re.findall(r"\bp\.(\w+)", _contributions(PAYMENT_NEW, 1))))


def _inputs(table: str) -> str:
    """A row's contribution inputs as one row value; of the state only whether it is open and
    which terminal state it is (every open state contributes alike)."""
    state = f"CASE WHEN {table}.state IN {TERMINAL} THEN {table}.state END"
    return ", ".join(state if c == "state" else f"{table}.{c}" for c in _read_columns())


def _changed_rows(mine: str, other: str) -> str:
    """Rows of transition table `mine` with no row of `other` of the same id and contribution
    inputs, as `p` with its card as `c` (revision 0031's filter of an `UPDATE`'s rows)."""
    return (
        f"(SELECT x.* FROM {mine} x WHERE NOT EXISTS (SELECT 1 FROM {other} y "
        f"WHERE y.id = x.id AND ({_inputs('x')}) IS NOT DISTINCT FROM ({_inputs('y')}))) p "
        "LEFT JOIN card_credential c ON c.id = p.card_id"
    )


def _trigger_functions(months: bool) -> list[str]:
    """The rollups' trigger functions: with `months` this revision's, else 0031's (0023's
    with 0031's filter of an `UPDATE`'s rows)."""
    lock = _lock_shared
    changed_new = _changed_rows("new_rows", "old_rows")
    changed_old = _changed_rows("old_rows", "new_rows")
    payment = f"""
CREATE OR REPLACE FUNCTION recovery_rollup_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {lock("SELECT DISTINCT merchant_id FROM new_rows")}
    {_apply(_contributions(PAYMENT_NEW, 1), months=months)}
  ELSIF TG_OP = 'DELETE' THEN
    {lock("SELECT DISTINCT merchant_id FROM old_rows")}
    {_apply(_contributions(PAYMENT_OLD, -1), months=months)}
  ELSE
    {lock("SELECT merchant_id FROM new_rows UNION SELECT merchant_id FROM old_rows")}
    {_apply(_contributions(changed_new, 1), _contributions(changed_old, -1), months=months)}
  END IF;
  RETURN NULL;
END
$$"""
    card = f"""
CREATE OR REPLACE FUNCTION recovery_rollup_card() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  {lock("SELECT merchant_id FROM new_cards UNION SELECT merchant_id FROM old_cards")}
  {_apply(_contributions(CARD_NEW, 1), _contributions(CARD_OLD, -1), months=months)}
  RETURN NULL;
END
$$"""
    truncate = f"""
CREATE OR REPLACE FUNCTION recovery_rollup_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM recovery_rollup;
  DELETE FROM recovery_day_rollup;
  {"DELETE FROM recovery_month_rollup;" if months else ""}
  RETURN NULL;
END
$$"""
    return [payment, card, truncate]


MONTH_REBUILD = f"""
CREATE FUNCTION recovery_month_rebuild(merchant uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  zone text;
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_CLASS}, hashtext(merchant::text));
  DELETE FROM recovery_month_rollup WHERE merchant_id = merchant;
  SELECT z.timezone INTO zone FROM recovery_day_zone z WHERE z.merchant_id = merchant;
  IF zone IS NULL THEN
    DELETE FROM recovery_month_zone WHERE merchant_id = merchant;
    RETURN;
  END IF;
  INSERT INTO recovery_month_zone AS z (merchant_id, timezone) VALUES (merchant, zone)
    ON CONFLICT ON CONSTRAINT pk_recovery_month_zone DO UPDATE SET timezone = excluded.timezone;
  INSERT INTO recovery_month_rollup ({", ".join(MONTH_KEYS)}, {", ".join(MEASURES)}, ttr_histogram)
  SELECT d.merchant_id, date_trunc('month', d.day)::date, d.currency, d.retryable, d.dimension,
    d.value, {", ".join(f"sum(d.{m})" for m in MEASURES)}, {_hist_sum("d.ttr_histogram")}
  FROM recovery_day_rollup d WHERE d.merchant_id = merchant
  GROUP BY 1, 2, 3, 4, 5, 6 HAVING {_changed("d.")} ORDER BY 1, 2, 3, 4, 5, 6;
END
$$"""


def _day_rebuild(months: bool) -> str:
    """0023's `recovery_day_rebuild`; with `months`, ending with the month rows' rebuild."""
    return f"""
CREATE OR REPLACE FUNCTION recovery_day_rebuild(merchant uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  zone text;
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_CLASS}, hashtext(merchant::text));
  SELECT r.timezone INTO zone FROM retry_policy r WHERE r.merchant_id = merchant
    ORDER BY r.version DESC LIMIT 1;
  IF zone IS NOT NULL THEN
    BEGIN
      PERFORM now() AT TIME ZONE zone;
    EXCEPTION WHEN invalid_parameter_value THEN
      zone := NULL;
    END;
  END IF;
  DELETE FROM recovery_day_rollup WHERE merchant_id = merchant;
  IF zone IS NULL THEN
    DELETE FROM recovery_day_zone WHERE merchant_id = merchant;
  ELSE
    INSERT INTO recovery_day_zone AS z (merchant_id, timezone) VALUES (merchant, zone)
      ON CONFLICT ON CONSTRAINT pk_recovery_day_zone DO UPDATE SET timezone = excluded.timezone;
    INSERT INTO recovery_day_rollup ({", ".join(DAY_KEYS)}, {", ".join(MEASURES)}, ttr_histogram)
    {_day_rows("recovery_rollup d", "zone", "d.merchant_id = merchant")};
  END IF;
  {"PERFORM recovery_month_rebuild(merchant);" if months else ""}
END
$$"""


# One merchant per transaction; the zone is read by the rebuild itself, under its lock.
BACKFILL = """
DO $$
DECLARE
  m uuid;
BEGIN
  FOR m IN SELECT merchant_id FROM recovery_day_zone ORDER BY merchant_id LOOP
    PERFORM recovery_month_rebuild(m);
    COMMIT;
  END LOOP;
END
$$"""


def _measure(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    # New tables: their foreign keys take a brief lock on `merchant`, bounded by the timeout.
    with short_lock_timeout(LOCK_TIMEOUT):
        _create_tables()
    # Replacing a function takes no table lock.
    for statement in [MONTH_REBUILD, *_trigger_functions(months=True), _day_rebuild(True)]:
        op.execute(statement)
    # One merchant per transaction (the backfill commits after each).
    with op.get_context().autocommit_block():
        op.execute(BACKFILL)


def _create_tables() -> None:
    op.create_table(
        "recovery_month_zone",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchant.id"],
            name=op.f("fk_recovery_month_zone_merchant_id_merchant"),
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_recovery_month_zone")),
        if_not_exists=True,
    )
    op.create_table(
        "recovery_month_rollup",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("dimension", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=32), nullable=False),
        *(_measure(m) for m in MEASURES),
        sa.Column("ttr_histogram", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchant.id"],
            name=op.f("fk_recovery_month_rollup_merchant_id_merchant"),
        ),
        sa.PrimaryKeyConstraint(*MONTH_KEYS, name=op.f("pk_recovery_month_rollup")),
        if_not_exists=True,
    )


def downgrade() -> None:
    for statement in [*_trigger_functions(months=False), _day_rebuild(False)]:
        op.execute(statement)
    op.execute("DROP FUNCTION recovery_month_rebuild(uuid)")
    with short_lock_timeout(LOCK_TIMEOUT):
        op.drop_table("recovery_month_rollup")
        op.drop_table("recovery_month_zone")
