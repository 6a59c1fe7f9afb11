"""Fixtures for the end-to-end tests: a scratch database for the `portal` command."""

import os
from collections.abc import AsyncIterator

import pytest

from app.embedded import Services, create_scratch_database, drop_database


@pytest.fixture
async def env(services: Services, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The environment a `portal` process runs in: this one's, on a new empty database (named
    after the test module) and the test Redis."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    url = await create_scratch_database(services, f"portal_{module}")
    yield {**os.environ, "DATABASE_URL": url, "REDIS_URL": services.redis_url}
    await drop_database(services, url)
