"""The test database ends lock waits and long statements with an error rather than hanging."""

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# As PostgreSQL shows tests.support.hangs.DATABASE_TIMEOUTS.
SHOWN = {"lock_timeout": "1min", "statement_timeout": "90s"}


async def test_the_tests_own_connection_has_the_limits(connection: AsyncConnection) -> None:
    for setting, value in SHOWN.items():
        assert (await connection.execute(text(f"SHOW {setting}"))).scalar_one() == value


async def test_any_other_connection_has_them_too(database_url: str) -> None:
    # Code under test with its own pool, or a helper process, connects this way.
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        for setting, value in SHOWN.items():
            assert await conn.fetchval(f"SHOW {setting}") == value
    finally:
        await conn.close()
