"""Monthly partitions of the append-only tables: created ahead, archived and dropped when old.

`ensure_partitions` keeps a partition for every month from the current one to
`months_ahead` months on. A row whose month had no partition yet went to the default partition;
when its month's partition is created those rows move into it, in the same transaction.

`expire_partitions` applies a table's retention window: a month that ended more than that many
days ago is written to the archive directory as gzip CSV (with a manifest giving its bounds,
columns, row count and SHA-256), and dropped only once the file holds as many rows as the
partition. Dropping a partition is a catalog change, not a scan or a mass delete.

Outbox events and webhook deliveries have more to wait for than their window (`_HELD`): a month
of deliveries goes only once none of it is pending and none was queued within the window (a
redelivery of an old event lives in its event's month); a month of events only once every one
was fanned out and no delivery refers to any of them (their month of deliveries went first).
Until then the `prune_history` cron deletes their rows one by one (app/services/retention.py).
A month of events is detached before it is dropped: deliveries refer to the outbox, and
PostgreSQL checks on detaching that none refers to that month, a join of the month's events
with the deliveries that runs under the outbox's exclusive lock (measured: 2.5 s for a month of
100,000 events beside 1.1 million deliveries). So the detach gives up after `DETACH_TIMEOUT`
and the month is kept: `prune_history` goes on deleting its events in batches (their
deliveries are gone), and a later run detaches what is left, in less time (and writes its
archive file again).

Every DDL statement runs under a short lock timeout: behind a long transaction it gives up, and
the next run of the cron tries again.
"""

import asyncio
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.models.partitioning import (
    OUTBOX_EVENT,
    PARTITIONED,
    WEBHOOK_DELIVERY,
    Partitioned,
    add_months,
    month_start,
)
from app.tenancy import SYSTEM_SCOPE

LOCK_TIMEOUT = "2s"
# How long detaching a month of events may hold the outbox (see the module's docstring).
DETACH_TIMEOUT = "1s"
# query_canceled: the statement timeout ended the detach.
_CANCELED = "57014"

# Tables other tables refer to by foreign key: their partitions are detached before the drop.
_REFERENCED = frozenset({OUTBOX_EVENT.table})

# Per table, what keeps a month that is past its window: a query of the partition (`{p}`) and
# its bounds (`:lo`, `:hi`) that finds a row when the month must stay.
_HELD = {
    WEBHOOK_DELIVERY.table: (
        "SELECT 1 FROM {p} WHERE status = 'pending' OR created_at >= :cutoff LIMIT 1"
    ),
    OUTBOX_EVENT.table: (
        "SELECT 1 FROM {p} WHERE dispatched_at IS NULL UNION ALL "
        "SELECT 1 FROM webhook_delivery WHERE event_created_at >= :lo "
        "AND event_created_at < :hi LIMIT 1"
    ),
}

_RANGE = re.compile(r"FOR VALUES FROM \((?:'([^']+)'|MINVALUE)\) TO \((?:'([^']+)'|MAXVALUE)\)")


@dataclass(frozen=True)
class Partition:
    name: str
    # None: unbounded on that side; both None: the default partition.
    lower: datetime | None
    upper: datetime | None
    default: bool = False


@dataclass(frozen=True)
class Created:
    partition: str
    moved: int


@dataclass(frozen=True)
class Archived:
    partition: str
    rows: int
    path: Path
    sha256: str


async def _utc(session: AsyncSession) -> None:
    # Partition bounds are read back as text: in UTC, whatever the server's time zone.
    await session.execute(text("SET LOCAL TimeZone = 'UTC'"))
    await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))


async def partitions(session: AsyncSession, table: Partitioned) -> list[Partition]:
    """The table's partitions with their bounds (the session must be in UTC, see `_utc`)."""
    rows = await session.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass) "
            "ORDER BY c.relname"
        ),
        {"t": table.table},
    )
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, default=True))
            continue
        match = _RANGE.fullmatch(bound)
        if match is None:
            raise RuntimeError(f"{name}: unexpected partition bound {bound!r}")
        lower, upper = (datetime.fromisoformat(v) if v else None for v in match.groups())
        found.append(Partition(name, lower, upper))
    return found


def _covers(existing: list[Partition], start: datetime, end: datetime) -> bool:
    return any(
        not p.default
        and (p.lower is None or p.lower <= start)
        and (p.upper is None or end <= p.upper)
        for p in existing
    )


async def _set_aside_referrers(session: AsyncSession, bounds: dict[str, datetime]) -> None:
    """The deliveries of the month's events, kept aside while the events move: PostgreSQL
    checks a foreign key to a partitioned table against the partition the row was in, so an
    event cannot leave the default partition while a delivery refers to it. The month has no
    partition of events yet, so its events are all in the default one and these deliveries
    are only theirs (usually none: the cron creates months ahead)."""
    await session.execute(
        text(
            "CREATE TEMPORARY TABLE moving_delivery ON COMMIT DROP AS "
            "WITH moved AS (DELETE FROM webhook_delivery WHERE event_created_at >= :lo "
            "AND event_created_at < :hi RETURNING *) SELECT * FROM moved"
        ),
        bounds,
    )


async def _restore_referrers(session: AsyncSession) -> None:
    await session.execute(text("INSERT INTO webhook_delivery SELECT * FROM moving_delivery"))
    await session.execute(text("DROP TABLE moving_delivery"))


async def _create(
    session: AsyncSession, table: Partitioned, start: datetime, end: datetime
) -> Created:
    """The month's partition, made as a table of its own and attached: an attach locks the
    partitioned table only against other schema changes (SHARE UPDATE EXCLUSIVE), where
    `CREATE TABLE ... PARTITION OF` would hold every reader and writer of it for the while. The
    new table's bound constraint spares the attach a scan of it; rows of the month waiting in
    the default partition move in first."""
    t, name, column = table.table, table.month(start), table.column
    bounds = {"lo": start, "hi": end}
    # Writes that would land in the default partition wait until the month has its own.
    await session.execute(text(f"LOCK TABLE {table.default} IN EXCLUSIVE MODE"))
    if table.table in _REFERENCED:
        await _set_aside_referrers(session, bounds)
    await session.execute(text(f"CREATE TABLE {name} (LIKE {t} INCLUDING DEFAULTS)"))
    await session.execute(
        text(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK ({column} >= "
            f"'{start.isoformat()}' AND {column} < '{end.isoformat()}')"
        )
    )
    moved = await session.execute(
        text(
            f"WITH moved AS (DELETE FROM {table.default} WHERE {column} >= :lo AND {column} < :hi "
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        ),
        bounds,
    )
    bound_sql = f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    await session.execute(text(f"ALTER TABLE {t} ATTACH PARTITION {name} {bound_sql}"))
    if table.table in _REFERENCED:
        await _restore_referrers(session)
    return Created(name, int(moved.rowcount))  # type: ignore[attr-defined]


async def ensure_partitions(db: Database, *, now: datetime, months_ahead: int) -> list[Created]:
    """Create the partitions of every month from `now`'s to `months_ahead` months on that are
    missing, each in its own short transaction."""
    created: list[Created] = []
    first = month_start(now)
    for table in PARTITIONED:
        for offset in range(months_ahead + 1):
            start = add_months(first, offset)
            end = add_months(start, 1)
            async with db.uow(SYSTEM_SCOPE) as uow:
                await _utc(uow.session)
                if _covers(await partitions(uow.session, table), start, end):
                    continue
                created.append(await _create(uow.session, table, start, end))
                await uow.commit()
    return created


async def _archive(
    session: AsyncSession, table: Partitioned, partition: Partition, directory: Path
) -> Archived:
    """Write the partition's rows to `<directory>/<table>/<partition>.csv.gz` and its manifest."""
    folder = directory / table.table
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{partition.name}.csv.gz"
    partial = target.with_suffix(".gz.partial")
    digest = hashlib.sha256()
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:
        raise RuntimeError("no database connection to copy from")
    with partial.open("wb") as file:
        with gzip.GzipFile(fileobj=file, mode="wb") as zipped:

            def compress(chunk: bytes) -> None:
                digest.update(chunk)
                zipped.write(chunk)

            async def write(chunk: bytes) -> None:
                # Compressing a month of rows takes a while: off the event loop.
                await asyncio.to_thread(compress, chunk)

            status = await driver.copy_from_query(
                f"SELECT * FROM {partition.name} ORDER BY {table.column}, id",
                output=write,
                format="csv",
                header=True,
            )
        file.flush()
        await asyncio.to_thread(os.fsync, file.fileno())
    rows = int(str(status).rsplit(" ", 1)[-1])
    columns = await session.execute(
        text(
            "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:p AS regclass) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        {"p": partition.name},
    )
    manifest = {
        "table": table.table,
        "partition": partition.name,
        "from": partition.lower.isoformat() if partition.lower else None,
        "to": partition.upper.isoformat() if partition.upper else None,
        "columns": list(columns.scalars()),
        "rows": rows,
        "sha256_of_csv": digest.hexdigest(),
    }
    os.replace(partial, target)
    target.with_suffix("").with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return Archived(partition.name, rows, target, digest.hexdigest())


async def _held(
    session: AsyncSession, table: Partitioned, partition: Partition, cutoff: datetime
) -> bool:
    query = _HELD.get(table.table)
    if query is None:
        return False
    lower = partition.lower or datetime.min.replace(tzinfo=cutoff.tzinfo)
    found = await session.execute(
        text(query.format(p=partition.name)),
        {"lo": lower, "hi": partition.upper, "cutoff": cutoff},
    )
    return found.first() is not None


async def _detach(session: AsyncSession, table: Partitioned, partition: Partition) -> bool:
    """Detach a partition other tables refer to, unless PostgreSQL's check that nothing
    refers to it would hold the table longer than `DETACH_TIMEOUT`; False: kept (the caller
    rolls back)."""
    await session.execute(text(f"SET LOCAL statement_timeout = '{DETACH_TIMEOUT}'"))
    try:
        await session.execute(text(f"ALTER TABLE {table.table} DETACH PARTITION {partition.name}"))
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) != _CANCELED:
            raise
        return False
    await session.execute(text("SET LOCAL statement_timeout TO DEFAULT"))
    return True


async def expire_partitions(
    db: Database, *, now: datetime, retention_days: dict[str, int], archive_dir: Path
) -> list[Archived]:
    """Archive, then drop, every partition that ended more than its table's window ago (0 or
    absent: keep), unless its table holds it (`_HELD`). The default partition is never
    dropped."""
    done: list[Archived] = []
    for table in PARTITIONED:
        days = retention_days.get(table.table, 0)
        if days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        async with db.session(SYSTEM_SCOPE) as session:
            await _utc(session)
            old = [
                p
                for p in await partitions(session, table)
                if not p.default and p.upper is not None and p.upper <= cutoff
            ]
        for partition in old:
            async with db.uow(SYSTEM_SCOPE) as uow:
                await _utc(uow.session)
                # Taken before the copy: nothing can be written to it between the copy and
                # the drop (nothing should: its month is over).
                await uow.session.execute(text(f"LOCK TABLE {partition.name} IN SHARE MODE"))
                if await _held(uow.session, table, partition, cutoff):
                    continue
                archived = await _archive(uow.session, table, partition, archive_dir)
                count = await uow.session.scalar(text(f"SELECT count(*) FROM {partition.name}"))
                if count != archived.rows:
                    raise RuntimeError(
                        f"{partition.name}: archived {archived.rows} rows of {count}; kept"
                    )
                if table.table in _REFERENCED and not await _detach(uow.session, table, partition):
                    continue
                await uow.session.execute(text(f"DROP TABLE {partition.name}"))
                await uow.commit()
            done.append(archived)
    return done
