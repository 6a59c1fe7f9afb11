"""Recovery rollups: a summed table kept current by statement triggers, backfilled here.

Revision ID: 0005_recovery_rollups
Revises: 0004_retry_engine
Create Date: 2026-11-29 17:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_recovery_rollups"
down_revision: str | None = "0004_retry_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of app.models.stats and app.retry.schedule as of this revision (a revision
# must not change when the code does); tests/integration/test_rollups.py checks they agree.
TTR_EDGES_HOURS = (
    1, 2, 4, 8, 12, 18, 24, 36, 48, 72, 96, 120, 144, 168, 192, 216, 240,
    288, 336, 408, 504, 600, 720, 960, 1440, 2160,
)  # fmt: skip
TTR_BUCKETS = len(TTR_EDGES_HOURS) + 1
# The control share (10%) as the first 64 bits of a SHA-256 must compare below.
CONTROL_THRESHOLD_HEX = "1999999999999a00"

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
ACTORS = ("portal", "processor", "billing_system", "customer")
TERMINAL = "('RECOVERED', 'EXHAUSTED', 'NOT_RETRYABLE', 'CANCELED')"
ZEROS = f"array_fill(0::bigint, ARRAY[{TTR_BUCKETS}])"


def _contributions(source: str, sign: int) -> str:
    """Each payment's signed contribution to its rollup row; `source` binds `p` and `c`."""
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
        "recovery_control_group(p.merchant_id, p.id) AS control_group",
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
    return f"SELECT {', '.join(columns)} FROM {source}"  # noqa: S608 - constants only


def _apply(*parts: str) -> str:
    """Add the grouped contributions to the rollup, in key order (so concurrent writers lock
    rows in one order), skipping groups whose changes cancel out (updates of other columns)."""
    keys = ", ".join(KEYS)
    sums = ", ".join(f"sum({m})" for m in MEASURES)
    changed = " OR ".join(
        [f"sum({m}) <> 0" for m in MEASURES] + [f"recovery_hist_sum(ttr_histogram) <> {ZEROS}"]
    )
    updates = ", ".join(
        [f"{m} = r.{m} + excluded.{m}" for m in MEASURES]
        + ["ttr_histogram = recovery_hist_add(r.ttr_histogram, excluded.ttr_histogram)"]
    )
    union = " UNION ALL ".join(parts)
    # Built from this module's constants only: no input reaches the text.
    return (
        f"INSERT INTO recovery_rollup AS r ({keys}, {', '.join(MEASURES)}, ttr_histogram) "  # noqa: S608
        f"SELECT {keys}, {sums}, recovery_hist_sum(ttr_histogram) FROM ({union}) d "
        f"GROUP BY {keys} HAVING {changed} ORDER BY {keys} "
        f"ON CONFLICT ON CONSTRAINT pk_recovery_rollup DO UPDATE SET {updates};"
    )


PAYMENT_NEW = "new_rows p LEFT JOIN card_credential c ON c.id = p.card_id"
PAYMENT_OLD = "old_rows p LEFT JOIN card_credential c ON c.id = p.card_id"
CARD_NEW = "payment p JOIN new_cards c ON c.id = p.card_id"
CARD_OLD = "payment p JOIN old_cards c ON c.id = p.card_id"


def _statements(script: str) -> list[str]:
    """The script's statements; each one ends a line with ';' (bodies end theirs with '$$;')."""
    found: list[str] = []
    current: list[str] = []
    in_body = False
    for line in script.strip().splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            found.append("\n".join(current).strip())
            current = []
    return found


FUNCTIONS = f"""
CREATE FUNCTION recovery_control_group(merchant uuid, payment uuid) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ('x' || substr(encode(sha256(convert_to(
      merchant::text || chr(31) || payment::text, 'UTF8')), 'hex'), 1, 16))::bit(64)
    < ('x' || '{CONTROL_THRESHOLD_HEX}')::bit(64)
$$;

CREATE FUNCTION recovery_ttr_bucket(seconds double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT width_bucket(seconds, ARRAY[{", ".join(str(h * 3600) for h in TTR_EDGES_HOURS)}]
    ::double precision[])
$$;

CREATE FUNCTION recovery_ttr_vector(bucket integer, sign integer) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN bucket IS NULL THEN {ZEROS}
    ELSE array_fill(0::bigint, ARRAY[bucket]) || sign::bigint
      || array_fill(0::bigint, ARRAY[{TTR_BUCKETS} - bucket - 1]) END
$$;

CREATE FUNCTION recovery_hist_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
    ELSE ARRAY(SELECT x + y FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i) ORDER BY i) END
$$;

CREATE AGGREGATE recovery_hist_sum(bigint[]) (SFUNC = recovery_hist_add, STYPE = bigint[]);

CREATE FUNCTION recovery_rollup_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_apply(_contributions(PAYMENT_NEW, 1))}
  ELSIF TG_OP = 'DELETE' THEN
    {_apply(_contributions(PAYMENT_OLD, -1))}
  ELSE
    {_apply(_contributions(PAYMENT_NEW, 1), _contributions(PAYMENT_OLD, -1))}
  END IF;
  RETURN NULL;
END
$$;

CREATE FUNCTION recovery_rollup_card() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  {_apply(_contributions(CARD_NEW, 1), _contributions(CARD_OLD, -1))}
  RETURN NULL;
END
$$;

CREATE FUNCTION recovery_rollup_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM recovery_rollup;
  RETURN NULL;
END
$$;

CREATE TRIGGER recovery_rollup_payment_insert AFTER INSERT ON payment
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION recovery_rollup_payment();
CREATE TRIGGER recovery_rollup_payment_update AFTER UPDATE ON payment
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION recovery_rollup_payment();
CREATE TRIGGER recovery_rollup_payment_delete AFTER DELETE ON payment
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION recovery_rollup_payment();
CREATE TRIGGER recovery_rollup_payment_truncate AFTER TRUNCATE ON payment
  FOR EACH STATEMENT EXECUTE FUNCTION recovery_rollup_truncate();
CREATE TRIGGER recovery_rollup_card_update AFTER UPDATE ON card_credential
  REFERENCING OLD TABLE AS old_cards NEW TABLE AS new_cards
  FOR EACH STATEMENT EXECUTE FUNCTION recovery_rollup_card();
"""  # noqa: S608 - built from this module's constants, no input

DROP = """
DROP TRIGGER recovery_rollup_card_update ON card_credential;
DROP TRIGGER recovery_rollup_payment_truncate ON payment;
DROP TRIGGER recovery_rollup_payment_delete ON payment;
DROP TRIGGER recovery_rollup_payment_update ON payment;
DROP TRIGGER recovery_rollup_payment_insert ON payment;
DROP FUNCTION recovery_rollup_truncate();
DROP FUNCTION recovery_rollup_card();
DROP FUNCTION recovery_rollup_payment();
DROP AGGREGATE recovery_hist_sum(bigint[]);
DROP FUNCTION recovery_hist_add(bigint[], bigint[]);
DROP FUNCTION recovery_ttr_vector(integer, integer);
DROP FUNCTION recovery_ttr_bucket(double precision);
DROP FUNCTION recovery_control_group(uuid, uuid);
"""


def upgrade() -> None:
    op.create_table(
        "recovery_rollup",
        sa.Column("merchant_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("processor", sa.String(length=32), nullable=False),
        sa.Column("decline_category", sa.String(length=32), nullable=False),
        sa.Column("funding", sa.String(length=32), nullable=False),
        sa.Column("control_group", sa.Boolean(), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        *(sa.Column(m, sa.BigInteger(), server_default="0", nullable=False) for m in MEASURES),
        sa.Column("ttr_histogram", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchant.id"], name=op.f("fk_recovery_rollup_merchant_id_merchant")
        ),
        sa.PrimaryKeyConstraint(*KEYS, name=op.f("pk_recovery_rollup")),
    )
    op.create_index(
        op.f("ix_recovery_rollup_merchant_id"), "recovery_rollup", ["merchant_id"], unique=False
    )
    # One statement per call: asyncpg prepares each, and a prepared statement holds one.
    for statement in _statements(FUNCTIONS):
        op.execute(statement)
    # Existing payments, in the transaction that installs the triggers: the lock taken on
    # `payment` by CREATE TRIGGER keeps writers out until both are committed.
    op.execute(_apply(_contributions(PAYMENT_NEW.replace("new_rows", "payment"), 1)))


def downgrade() -> None:
    for statement in _statements(DROP):
        op.execute(statement)
    op.drop_index(op.f("ix_recovery_rollup_merchant_id"), table_name="recovery_rollup")
    op.drop_table("recovery_rollup")
