"""Test fixtures: one migrated database per run, each test inside a rolled-back transaction.

The suite runs in one process per core (pytest-xdist, `-n auto`) when PostgreSQL and Redis are
servers of their own: each worker migrates a scratch database of its own and uses a Redis
database of its own (the next numbers after the configured one), so no worker sees another's
rows, queues or rate-limit counters. A module's tests stay on one worker (its module-scoped
fixtures are set up once), and the browser tests share one worker and one demo. Where the tests
would start an embedded PostgreSQL and Redis (one data folder), they run in this process alone.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from xdist.scheduler import LoadScopeScheduling

from app.clock import FixedClock
from app.db import Database
from app.embedded import (
    Services,
    create_scratch_database,
    drop_database,
    resolve_services,
    running_servers,
)
from app.settings import Settings
from portal.migrate import upgrade_database
from tests.support import hangs

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
MOST_WORKERS = 4
REDIS_DATABASES = 16  # Redis's default number of databases


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per core (at most MOST_WORKERS) on running servers; none (this
    process alone) when the tests would start embedded ones."""
    if running_servers(Settings(environment="test")) is None:
        return 0
    return max(1, min(MOST_WORKERS, len(os.sched_getaffinity(0))))


def _worker_redis_url(url: str, worker: int) -> str:
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base + 1 + worker) % REDIS_DATABASES}"))


def _separate_worker() -> None:
    """Under xdist, this worker's own Redis database, for this process and those it starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    servers = running_servers(Settings(environment="test")) if worker else None
    if worker is None or servers is None:
        return
    os.environ["REDIS_URL"] = _worker_redis_url(servers[1], int(worker.removeprefix("gw")))


_separate_worker()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling:
    """Whole modules to a worker (their module-scoped fixtures set up once), and every browser
    test to one worker (one demo for them all)."""
    return _ByModule(config, log)


class _ByModule(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.partition("::")[0]
        return "tests/browser" if module.startswith("tests/browser/") else module


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
