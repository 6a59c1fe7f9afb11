"""Fixtures for the integration tests: the portal over HTTP, in-process."""

from collections.abc import AsyncIterator

import httpx
import pytest

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.settings import Settings
from tests.support.http import portal_http


@pytest.fixture
async def client(
    db: Database, services: Services, settings: Settings, clock: FixedClock
) -> AsyncIterator[httpx.AsyncClient]:
    async with portal_http(db, services.redis_url, settings, clock) as http:
        yield http
