"""Test fixtures: one migrated database per run, each test inside a rolled-back transaction."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services, create_scratch_database, drop_database, resolve_services
from app.settings import Settings
from portal.migrate import upgrade_database
from tests.support import hangs

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session", autouse=True)
async def _report_hung_tasks() -> None:
    # pytest-timeout's stacks show a hung await only as the loop's select(): add the tasks'.
    hangs.watch(asyncio.get_running_loop())


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(environment="test")


@pytest.fixture(scope="session")
async def services(settings: Settings) -> AsyncIterator[Services]:
    found = await resolve_services(settings)
    yield found
    found.close()


@pytest.fixture
async def redis(services: Services) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def database_url(services: Services) -> AsyncIterator[str]:
    url = await create_scratch_database(services, "portal_test")
    await asyncio.to_thread(upgrade_database, url)
    await hangs.limit_waits(url)
    yield url
    await drop_database(services, url)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=2)
    yield eng
    await eng.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            yield conn
        finally:
            await transaction.rollback()


@pytest.fixture
def db(connection: AsyncConnection) -> Database:
    return Database.for_connection(connection)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)
