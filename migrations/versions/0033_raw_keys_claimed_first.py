"""A raw record whose key its writer already claimed lands without claiming it again.

Revision 0025's trigger claims each raw record's once-only key (`raw_record_key`) with an
`INSERT … ON CONFLICT DO NOTHING` per row, and skips the row when another holds the key: about
half of what landing a raw row costs PostgreSQL. Ingestion now claims a batch's keys itself,
in one statement before its raw rows (the same insert, so the same waits and the same answer
when two transactions land one record), and writes only the rows whose keys it got. The
trigger first looks for a key held by the row's own id: found, the row was claimed by its
writer and goes in; not found, it claims the key as before (every other writer of
`raw_record` is unchanged). A key is held by one raw record id (`raw_record_id` is unique),
so a row finds its own key only if its writer claimed it for it.

Replacing a function takes no table lock (under a short lock timeout all the same). Down
restores 0025's function.

Revision ID: 0033_raw_keys_claimed_first
Revises: 0032_recovery_month_rollups
Create Date: 2026-12-06 22:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

from migrations.locks import short_lock_timeout

revision: str = "0033_raw_keys_claimed_first"
down_revision: str | None = "0032_recovery_month_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CLAIM_UNLESS_CLAIMED = """
CREATE OR REPLACE FUNCTION raw_record_claim_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM raw_record_key WHERE raw_record_id = NEW.id;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    INSERT INTO raw_record_key (connection_id, content_hash, raw_record_id, received_at)
    VALUES (NEW.connection_id, NEW.content_hash, NEW.id, NEW.received_at)
    ON CONFLICT (connection_id, content_hash) DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END $$
"""

# Revision 0025's function, as it was.
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


def upgrade() -> None:
    with short_lock_timeout("5s"):
        op.execute(_CLAIM_UNLESS_CLAIMED)


def downgrade() -> None:
    with short_lock_timeout("5s"):
        op.execute(_CLAIM)
