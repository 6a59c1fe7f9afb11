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


def normalize_job_id(connection_id: uuid.UUID) -> str:
    return f"normalize:{connection_id}"


async def enqueue_normalize(redis: ArqRedis, connection_id: uuid.UUID) -> bool:
    """Queue normalization of a connection's landed records (after a webhook delivery, or
    from the sweep); False when one is already queued or running."""
    job = await redis.enqueue_job(
        "normalize_connection", str(connection_id), _job_id=normalize_job_id(connection_id)
    )
    return job is not None


def attempt_job_id(payment_id: uuid.UUID, attempt_number: int) -> str:
    """One job per portal attempt: a second enqueue of the same attempt is a no-op."""
    return f"attempt:{payment_id}:{attempt_number}"


async def enqueue_attempt(redis: ArqRedis, payment_id: uuid.UUID, attempt_number: int) -> bool:
    """Queue the charge of one claimed attempt; False when it is already queued or running."""
    job = await redis.enqueue_job(
        "attempt_payment",
        str(payment_id),
        attempt_number,
        _job_id=attempt_job_id(payment_id, attempt_number),
    )
    return job is not None


def bulk_action_job_id(action_id: uuid.UUID) -> str:
    return f"bulk_action:{action_id}"


async def enqueue_bulk_action(redis: ArqRedis, action_id: uuid.UUID) -> bool:
    """Queue a bulk action's job; False when it is already queued or running."""
    job = await redis.enqueue_job(
        "run_bulk_action", str(action_id), _job_id=bulk_action_job_id(action_id)
    )
    return job is not None
