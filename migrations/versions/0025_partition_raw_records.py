"""Raw records become monthly range partitions by `received_at`; their once-only key moves to
`raw_record_key`.

A record is stored once per connection, by the hash of its content. That was a unique
constraint on `raw_record (connection_id, content_hash)`; a partitioned table's unique
constraints must contain its partition column, and a record polled again is received at another
time, so the key gets a table of its own: `raw_record_key (connection_id, content_hash)` with the
id of the row that holds it. A trigger on `raw_record` claims the key before each insert and
skips the row when another already holds it (the same answer `ON CONFLICT DO NOTHING` gave:
two transactions landing one record wait for each other, and the second inserts nothing). The
attempts and dead letters that point at a raw record refer to its key row, which exists for
every raw record and never moves.

Steps, each short or online:
1. the key table and the trigger (new rows claim their key from now on);
2. the key rows of the rows already stored, in batches of 10,000, each committed;
3. the attempts' and dead letters' foreign keys to the key table, added `NOT VALID` and then
   validated (a read that blocks no writes);
4. the table partitioned as 0021 does (`migrations/partitioning.py`); the old foreign keys to
   `raw_record` are dropped in the same transaction.

Workers of the previous version insert with `ON CONFLICT (connection_id, content_hash)`, which
the partitioned table cannot take: their polls fail (and are retried) until they run this
version; nothing is lost, since a poll that fails commits nothing and its cursor stays.

Revision ID: 0025_partition_raw_records
Revises: 0024_partition_timelines
Create Date: 2026-12-06 14:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

from app.models.partitioning import RAW_RECORD
from migrations.locks import short_lock_timeout
from migrations.partitioning import Shape, prepare, swap, unpartition

revision: str = "0025_partition_raw_records"
down_revision: str | None = "0024_partition_timelines"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGER = (
    "CREATE OR REPLACE TRIGGER raw_record_claim_key BEFORE INSERT ON raw_record "
    "FOR EACH ROW EXECUTE FUNCTION raw_record_claim_key()"
)

SHAPE = Shape(
    RAW_RECORD,
    indexes=(
        ("ix_raw_record_connection_received", "(connection_id, received_at)"),
        (
            "ix_raw_record_pending",
            "(connection_id, received_at) WHERE normalized_at IS NULL",
        ),
    ),
    foreign_keys=(
        (
            "fk_raw_record_connection_id_processor_connection",
            "connection_id",
            "processor_connection",
        ),
        ("fk_raw_record_merchant_id_merchant", "merchant_id", "merchant"),
    ),
    before_attach=(
        "DROP TRIGGER raw_record_claim_key ON raw_record_p_initial",
        _TRIGGER,
    ),
)

# (table, constraint to the raw row, constraint to its key)
_REFERRERS = (
    (
        "payment_attempt",
        "fk_payment_attempt_raw_record_id_raw_record",
        "fk_payment_attempt_raw_record_id_raw_record_key",
    ),
    (
        "dead_letter",
        "fk_dead_letter_raw_record_id_raw_record",
        "fk_dead_letter_raw_record_id_raw_record_key",
    ),
)

_KEY_TABLE = """
        CREATE TABLE IF NOT EXISTS raw_record_key (
            connection_id uuid NOT NULL,
            content_hash varchar(64) NOT NULL,
            raw_record_id uuid NOT NULL,
            received_at timestamptz NOT NULL,
            CONSTRAINT pk_raw_record_key PRIMARY KEY (connection_id, content_hash),
            CONSTRAINT uq_raw_record_key_raw_record_id UNIQUE (raw_record_id)
        )
        """

_CLAIM = """
CREATE OR REPLACE FUNCTION raw_record_claim_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO raw_record_key (connection_id, content_hash, raw_record_id, received_at)
    VALUES (NEW.connection_id, NEW.content_hash, NEW.id, NEW.received_at)
    ON CONFLICT (connection_id, content_hash) DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END $$
"""

_BACKFILL = """
CREATE OR REPLACE PROCEDURE raw_record_key_backfill() LANGUAGE plpgsql AS $$
DECLARE
    last uuid := '00000000-0000-0000-0000-000000000000';
    batch uuid;
BEGIN
    LOOP
        -- The 10,000th id after the last batch; none: the rest is the last batch.
        SELECT id INTO batch FROM raw_record WHERE id > last ORDER BY id OFFSET 9999 LIMIT 1;
        INSERT INTO raw_record_key (connection_id, content_hash, raw_record_id, received_at)
        SELECT connection_id, content_hash, id, received_at FROM raw_record
        WHERE id > last AND (batch IS NULL OR id <= batch)
        ON CONFLICT (connection_id, content_hash) DO NOTHING;
        COMMIT;
        EXIT WHEN batch IS NULL;
        last := batch;
    END LOOP;
END $$
"""


def upgrade() -> None:
    # Each statement can be run again: the steps before the swap commit one by one.
    with short_lock_timeout("5s"):
        op.execute(_KEY_TABLE)
        op.execute(_CLAIM)
        op.execute(_TRIGGER)
    with op.get_context().autocommit_block():
        op.execute(_BACKFILL)
        op.execute("CALL raw_record_key_backfill()")
        op.execute("DROP PROCEDURE IF EXISTS raw_record_key_backfill()")
        with short_lock_timeout("5s", in_transaction=False):
            for table, _, to_key in _REFERRERS:
                op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {to_key}")
                op.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {to_key} FOREIGN KEY (raw_record_id) "
                    "REFERENCES raw_record_key (raw_record_id) NOT VALID"
                )
                op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {to_key}")
        prepare(SHAPE)
    with short_lock_timeout("5s"):
        for table, to_row, _ in _REFERRERS:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {to_row}")
    swap(SHAPE)


def downgrade() -> None:
    # First: copying the later months back into the first partition must not go through it.
    op.execute("DROP TRIGGER raw_record_claim_key ON raw_record")
    unpartition(SHAPE)
    for table, to_row, to_key in _REFERRERS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {to_key}")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {to_row} FOREIGN KEY (raw_record_id) "
            "REFERENCES raw_record (id)"
        )
    op.execute("DROP FUNCTION raw_record_claim_key()")
    op.execute("DROP TABLE raw_record_key")
