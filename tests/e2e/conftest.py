"""Fixtures for the end-to-end tests: a scratch database and a job queue for the `portal`
command."""

import os
from collections.abc import AsyncIterator

import pytest

from app.embedded import Services, create_scratch_database, drop_database
from tests.support.queue import drop_queue, job_queue, private_queue_name


@pytest.fixture
def queue_name() -> str:
    """The test's own job queue: the `portal` processes it starts queue and take jobs there, so
    no worker of another test or test run sharing the Redis takes them (nor they its jobs), and
    no job left by an earlier one waits ahead of them."""
    return private_queue_name()


@pytest.fixture
async def env(
    services: Services, queue_name: str, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, str]]:
    """The environment a `portal` process runs in: this one's, on a new empty database (named
    after the test module), the test Redis and the test's own queue."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    url = await create_scratch_database(services, f"portal_{module}")
    yield {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": services.redis_url,
        "PORTAL_QUEUE_NAME": queue_name,
    }
    async with job_queue(services, queue_name) as queue:
        await drop_queue(queue)
    await drop_database(services, url)
