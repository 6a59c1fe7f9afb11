"""Turning a plain append-only table into a monthly range-partitioned one, without a long lock.

PostgreSQL cannot partition a table in place. The table is renamed and attached, whole, as the
first partition of a new partitioned table of the same name and shape, covering everything up
to a month boundary after its newest row. What makes that quick is prepared beforehand, outside
the migration's transaction, while the table takes its reads and writes:

1. a unique index on (id, time column) is built concurrently: a partitioned table's primary key
   must contain its partition column, and the attached table's key must match the new one's;
2. a CHECK constraint bounding the time column is added `NOT VALID` and then validated, which
   reads the table without blocking writes. With it PostgreSQL knows every row fits the
   partition's range and skips the scan an attach would otherwise make under its lock.

Then one short transaction (under a short lock timeout) renames the table, gives it the new
key, creates the partitioned table with the same columns, constraints and indexes (each
partition's existing index is adopted, none is rebuilt), attaches it, and adds the default
partition and the next months' partitions. Each step can be run again after an interruption.

The names and the time column come from `app.models.partitioning`.
"""

from dataclasses import dataclass

from alembic import op

from app.models.partitioning import Partitioned
from migrations.locks import short_lock_timeout

# Partitions created ahead by the migration; the partition cron keeps them ahead afterwards.
MONTHS_AHEAD = 3


@dataclass(frozen=True)
class Shape:
    """What the partitioned table re-declares: its indexes and foreign keys, by name."""

    table: Partitioned
    # (index name, what follows `ON <table>`: the column list and any predicate)
    indexes: tuple[tuple[str, str], ...]
    # (constraint name, column, referenced table)
    foreign_keys: tuple[tuple[str, str, str], ...]
    # Unique indexes, as `indexes`; they must contain the partition column.
    unique_indexes: tuple[tuple[str, str], ...] = ()
    # Further constraints, (name, definition), e.g. a foreign key of several columns (the
    # first partition must already hold the same one, validated, for the attach to adopt it).
    constraints: tuple[tuple[str, str], ...] = ()
    # Run on the new partitioned table before the first partition is attached (e.g. triggers,
    # which the attach then gives the partition).
    before_attach: tuple[str, ...] = ()

    @property
    def all_indexes(self) -> tuple[tuple[str, str], ...]:
        return self.indexes + self.unique_indexes

    @property
    def key_index(self) -> str:
        return f"ux_{self.table.table}_id_{self.table.column}"

    @property
    def bound(self) -> str:
        return f"ck_{self.table.initial}_bound"


def _utc_month(expr: str) -> str:
    return f"(date_trunc('month', ({expr}) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


def prepare(shape: Shape) -> None:
    """The online part: run inside an autocommit block."""
    t, column = shape.table.table, shape.table.column
    op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {shape.key_index}")
    op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {shape.key_index} ON {t} (id, {column})")
    # The bound: the first month boundary at least two months ahead and after the newest row,
    # so that rows written while the migration runs still fit it.
    cutoff = (
        f"greatest({_utc_month('now()')} + interval '2 months', "
        f"{_utc_month(f'(SELECT max({column}) FROM {t})')} + interval '1 month')"
    )
    # The statements are built with quote_literal, not format('%L'): a rendered script
    # (`alembic upgrade --sql`) doubles every percent sign.
    with short_lock_timeout("5s", in_transaction=False):
        op.execute(f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {shape.bound}")
        op.execute(
            f"DO $$ BEGIN EXECUTE 'ALTER TABLE {t} ADD CONSTRAINT {shape.bound} "
            f"CHECK ({column} < ' || quote_literal({cutoff}) || ') NOT VALID'; END $$"
        )
        # A scan that blocks no reads or writes; the timeout bounds only the wait for its lock.
        op.execute(f"ALTER TABLE {t} VALIDATE CONSTRAINT {shape.bound}")


def swap(shape: Shape) -> None:
    """The transactional part: the renames, the new table, the attach (a few catalog changes)."""
    p = shape.table
    t, column, initial = p.table, p.column, p.initial
    with short_lock_timeout("5s"):
        op.execute(f"ALTER TABLE {t} RENAME TO {initial}")
        op.execute(f"ALTER TABLE {initial} DROP CONSTRAINT pk_{t}")
        op.execute(
            f"ALTER TABLE {initial} ADD CONSTRAINT pk_{initial} PRIMARY KEY USING INDEX "
            f"{shape.key_index}"
        )
        for name, _ in shape.all_indexes:
            op.execute(f"ALTER INDEX {name} RENAME TO {_partition_index(name, t, initial)}")
        op.execute(
            f"CREATE TABLE {t} (LIKE {initial} INCLUDING DEFAULTS) PARTITION BY RANGE ({column})"
        )
        op.execute(f"ALTER TABLE {t} ADD CONSTRAINT pk_{t} PRIMARY KEY (id, {column})")
        for name, col, ref in shape.foreign_keys:
            op.execute(
                f"ALTER TABLE {t} ADD CONSTRAINT {name} FOREIGN KEY ({col}) REFERENCES {ref} (id)"
            )
        for name, definition in shape.constraints:
            op.execute(f"ALTER TABLE {t} ADD CONSTRAINT {name} {definition}")
        for name, definition in shape.indexes:
            op.execute(f"CREATE INDEX {name} ON {t} {definition}")
        for name, definition in shape.unique_indexes:
            op.execute(f"CREATE UNIQUE INDEX {name} ON {t} {definition}")
        for statement in shape.before_attach:
            op.execute(statement)
        # The bound the constraint was validated with is the initial partition's upper bound.
        op.execute(
            f"""DO $$
DECLARE
    cutoff timestamptz;
BEGIN
    SELECT substring(pg_get_constraintdef(oid) FROM '''([^'']+)''')::timestamptz INTO cutoff
    FROM pg_constraint WHERE conname = '{shape.bound}' AND conrelid = '{initial}'::regclass;
    EXECUTE 'ALTER TABLE {t} ATTACH PARTITION {initial} FOR VALUES FROM (MINVALUE) TO ('
        || quote_literal(cutoff) || ')';
    EXECUTE 'CREATE TABLE {p.default} PARTITION OF {t} DEFAULT';
    FOR i IN 0..{MONTHS_AHEAD - 1} LOOP
        EXECUTE 'CREATE TABLE '
            || quote_ident('{t}_p' || to_char(
                (cutoff + make_interval(months => i)) AT TIME ZONE 'UTC', 'YYYYMM'))
            || ' PARTITION OF {t} FOR VALUES FROM ('
            || quote_literal(cutoff + make_interval(months => i)) || ') TO ('
            || quote_literal(cutoff + make_interval(months => i + 1)) || ')';
    END LOOP;
END $$"""
        )


def _partition_index(name: str, table: str, initial: str) -> str:
    return name.replace(table, initial, 1)


def unpartition(shape: Shape) -> None:
    """Back to one plain table (a downgrade: rows are copied, under the table's lock)."""
    p = shape.table
    t, initial = p.table, p.initial
    op.execute(f"ALTER TABLE {t} DETACH PARTITION {initial}")
    op.execute(f"ALTER TABLE {initial} DROP CONSTRAINT IF EXISTS {shape.bound}")
    op.execute(f"INSERT INTO {initial} SELECT * FROM {t}")
    op.execute(f"DROP TABLE {t}")
    op.execute(f"ALTER TABLE {initial} RENAME TO {t}")
    op.execute(f"ALTER TABLE {t} DROP CONSTRAINT pk_{initial}")
    op.execute(f"ALTER TABLE {t} ADD CONSTRAINT pk_{t} PRIMARY KEY (id)")
    for name, _ in shape.all_indexes:
        op.execute(f"ALTER INDEX {_partition_index(name, t, initial)} RENAME TO {name}")
