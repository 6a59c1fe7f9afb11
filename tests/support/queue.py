"""The real arq queue of the test services, a queue of a test's own, and removal of the jobs a
test queued."""

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    default_queue_name,
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

from app.embedded import Services
from jobs.enqueue import bulk_action_job_id, poll_job_id
from jobs.telemetry import heartbeats_key


def private_queue_name() -> str:
    """A queue name no other test, test run or worker on the Redis uses: a `portal` process
    given it (PORTAL_QUEUE_NAME) takes and queues jobs there only."""
    return f"{default_queue_name}:test-{uuid.uuid4().hex}"


@asynccontextmanager
async def job_queue(
    services: Services, queue_name: str = default_queue_name
) -> AsyncIterator[ArqRedis]:
    """A client of the queue `queue_name` (arq's default unless given) on the test Redis."""
    pool = await create_pool(
        RedisSettings.from_dsn(services.redis_url), default_queue_name=queue_name
    )
    try:
        yield pool
    finally:
        await pool.aclose()


async def drop_queue(queue: ArqRedis) -> None:
    """Remove a private queue with every job left in it, and its workers' health keys."""
    name = queue.default_queue_name
    await _discard(queue, [member.decode() for member in await queue.zrange(name, 0, -1)])
    await queue.delete(name, name + health_check_key_suffix, heartbeats_key(name))


async def discard_polls(queue: ArqRedis, connection_ids: Iterable[uuid.UUID]) -> None:
    """Remove poll jobs of these connections, so no worker sharing the Redis runs them."""
    await _discard(queue, [poll_job_id(c) for c in connection_ids])


async def discard_bulk_actions(queue: ArqRedis) -> None:
    """Remove every queued bulk action job (ids `bulk_action_job_id`), so no worker sharing the
    Redis runs them."""
    prefix = bulk_action_job_id(uuid.UUID(int=0)).split(":")[0] + ":"
    job_ids = [
        member.decode()
        for member in await queue.zrange(queue.default_queue_name, 0, -1)
        if member.decode().startswith(prefix)
    ]
    await _discard(queue, job_ids)


async def _discard(queue: ArqRedis, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        await queue.zrem(queue.default_queue_name, job_id)
        await queue.delete(
            *(
                prefix + job_id
                for prefix in (
                    job_key_prefix,
                    result_key_prefix,
                    retry_key_prefix,
                    in_progress_key_prefix,
                )
            )
        )
