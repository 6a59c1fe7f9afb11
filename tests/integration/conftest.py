"""Fixtures for the integration tests: the portal over HTTP, in-process."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.settings import Settings
from tests.support.http import portal_http
from tests.support.private_redis import PrivateRedis


@pytest.fixture
async def client(
    db: Database, services: Services, settings: Settings, clock: FixedClock
) -> AsyncIterator[httpx.AsyncClient]:
    async with portal_http(db, services.redis_url, settings, clock) as http:
        yield http


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A Redis server of the test's own, to stop, refuse or restart without touching others."""
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
