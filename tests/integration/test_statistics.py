"""Planner statistics during a backfill: a lookup table that doubled is analyzed, once."""

from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.db import Database
from app.workflows.polling import refresh_statistics

PROBE = "stats_probe_table"


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _fill(url: str, rows: int) -> None:
    conn = await asyncpg.connect(_plain(url))
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE} (n integer)")
        await conn.execute(f"INSERT INTO {PROBE} SELECT generate_series(1, $1)", rows)
        # Publish this backend's counters now rather than at its next idle moment.
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A committing database handle; the probe table is dropped afterwards."""
    handle = Database.from_url(database_url)
    try:
        yield handle
    finally:
        await handle.dispose()
        conn = await asyncpg.connect(_plain(database_url))
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {PROBE}")
        finally:
            await conn.close()


async def test_a_table_that_doubled_is_analyzed_once(database_url: str, db: Database) -> None:
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


async def test_a_small_table_is_left_to_autovacuum(database_url: str, db: Database) -> None:
    await _fill(database_url, 50)
    assert await refresh_statistics(db, (PROBE,), floor=1000) == []
