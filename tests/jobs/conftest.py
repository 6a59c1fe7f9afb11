"""Fixtures of the job tests."""

import uuid
from collections.abc import AsyncIterator

import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from app.embedded import Services
from jobs.telemetry import heartbeats_key


@pytest.fixture
async def queue(services: Services, request: pytest.FixtureRequest) -> AsyncIterator[ArqRedis]:
    """A queue of its own on the shared Redis, named after the test module: no other worker
    takes these jobs. Its heartbeats go with it. (Modules whose jobs leave other keys behind
    define a `queue` of their own.)"""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"test:{module}:{uuid.uuid4().hex[:8]}"
    pool = await create_pool(RedisSettings.from_dsn(services.redis_url), default_queue_name=name)
    try:
        yield pool
    finally:
        await pool.delete(name, heartbeats_key(name))
        await pool.aclose()
