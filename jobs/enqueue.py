"""Typed enqueue helpers: the only way other layers put jobs on the queue."""

import uuid

from arq.connections import ArqRedis


def poll_job_id(connection_id: uuid.UUID) -> str:
    return f"poll:{connection_id}"


async def enqueue_poll(redis: ArqRedis, connection_id: uuid.UUID) -> bool:
    """Queue a poll of one connection; False when one is already queued or running."""
    job = await redis.enqueue_job(
        "poll_connection", str(connection_id), _job_id=poll_job_id(connection_id)
    )
    return job is not None


async def enqueue_normalize(redis: ArqRedis, connection_id: uuid.UUID) -> bool:
    """Queue normalization of a connection's landed records (after a webhook delivery)."""
    job = await redis.enqueue_job(
        "normalize_connection", str(connection_id), _job_id=f"normalize:{connection_id}"
    )
    return job is not None
