"""The portal's pooled connections: one the server closed is replaced at checkout, without a
pre-ping; each runs with the session settings the portal sets."""

import asyncio

import asyncpg
from sqlalchemy import text

from app.db import Database
from app.tenancy import SYSTEM_SCOPE


def _plain(url: str) -> str:
    return url.replace("+asyncpg", "")


async def test_a_connection_the_server_ended_is_replaced_at_checkout(database_url: str) -> None:
    db = Database.from_url(database_url, pool_size=1, max_overflow=0)
    try:
        async with db.session(SYSTEM_SCOPE) as session:
            before = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # What a PostgreSQL restart does to an idle pooled connection: the server ends it.
        admin = await asyncpg.connect(_plain(database_url))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", before)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)
        async with db.session(SYSTEM_SCOPE) as session:
            after = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert after != before
    finally:
        await db.dispose()


async def test_the_portals_connections_run_without_jit(database_url: str) -> None:
    """JIT compilation would cost the statistics statement more than its whole execution."""
    db = Database.from_url(database_url, pool_size=1, max_overflow=0)
    try:
        async with db.session(SYSTEM_SCOPE) as session:
            assert (await session.execute(text("SHOW jit"))).scalar_one() == "off"
    finally:
        await db.dispose()
