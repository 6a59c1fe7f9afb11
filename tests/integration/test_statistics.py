"""Planner statistics during a backfill: a lookup table that doubled is analyzed, once."""

import asyncpg

from app.db import Database
from app.services.polling import refresh_statistics

PROBE = "stats_probe_table"


async def _fill(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE} (n integer)")
        await conn.execute(f"INSERT INTO {PROBE} SELECT generate_series(1, $1)", rows)
        # Publish this backend's counters now rather than at its next idle moment.
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
    finally:
        await conn.close()


async def test_a_table_that_doubled_is_analyzed_once(database_url: str) -> None:
    db = Database.from_url(database_url)
    try:
        await _fill(database_url, 3000)
        assert await refresh_statistics(db, (PROBE,), floor=1000) == [PROBE]
        # Analyzed: nothing changed since, so nothing to do.
        assert await refresh_statistics(db, (PROBE,), floor=1000) == []
        # A tenth more is the ordinary trickle autovacuum keeps up with.
        await _fill(database_url, 300)
        assert await refresh_statistics(db, (PROBE,), floor=100) == []
        # Doubling again is a backfill.
        await _fill(database_url, 4000)
        assert await refresh_statistics(db, (PROBE,), floor=1000) == [PROBE]
    finally:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        await conn.execute(f"DROP TABLE IF EXISTS {PROBE}")
        await conn.close()
        await db.dispose()


async def test_a_small_table_is_left_to_autovacuum(database_url: str) -> None:
    db = Database.from_url(database_url)
    try:
        await _fill(database_url, 50)
        assert await refresh_statistics(db, (PROBE,), floor=1000) == []
    finally:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        await conn.execute(f"DROP TABLE IF EXISTS {PROBE}")
        await conn.close()
        await db.dispose()
