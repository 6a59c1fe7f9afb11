"""Migrations: up from empty, `alembic check` clean, down to base, up again."""

import asyncio

import asyncpg
from alembic import command

from app.embedded import Services, create_scratch_database, drop_database
from portal.migrate import alembic_config


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_upgrade_check_downgrade_upgrade(services: Services) -> None:
    url = await create_scratch_database(services, "portal_migrations")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "head")
        assert {"merchant", "payment", "payment_attempt", "retry_policy", "audit_log"} <= (
            await _tables(url)
        )
        # Raises when the models and the migrations disagree.
        await asyncio.to_thread(command.check, cfg)
        await asyncio.to_thread(command.downgrade, cfg, "base")
        assert await _tables(url) == {"alembic_version"}
        await asyncio.to_thread(command.upgrade, cfg, "head")
        assert "payment" in await _tables(url)
    finally:
        await drop_database(services, url)
