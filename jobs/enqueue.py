"""Typed enqueue helpers: the only way other layers put jobs on the queue."""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus


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


_ATTEMPT_JOB_PREFIX = "attempt:"


def attempt_job_id(payment_id: uuid.UUID, attempt_number: int) -> str:
    """One job per portal attempt: a second enqueue of the same attempt is a no-op."""
    return f"{_ATTEMPT_JOB_PREFIX}{payment_id}:{attempt_number}"


def is_attempt_job_id(job_id: str) -> bool:
    """Whether a queued job is a charge (`attempt_job_id`): workers give charges slots of
    their own."""
    return job_id.startswith(_ATTEMPT_JOB_PREFIX)


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


# Jobs support requests through the API: each request is an audit entry, and its job id names
# the entry, so the job can check that the request was committed before it acts.
REPLAY_FUNCTION = "replay_connection_requested"
RETRAIN_FUNCTION = "retrain_model_requested"


def replay_job_id(request_id: uuid.UUID) -> str:
    return f"replay:{request_id}"


def retrain_job_id(request_id: uuid.UUID) -> str:
    return f"retrain:{request_id}"


async def enqueue_replay(redis: ArqRedis, connection_id: uuid.UUID, request_id: uuid.UUID) -> str:
    """Queue a replay of one connection's raw history; the job id, for following it."""
    job_id = replay_job_id(request_id)
    await redis.enqueue_job(REPLAY_FUNCTION, str(connection_id), str(request_id), _job_id=job_id)
    return job_id


async def enqueue_retrain(redis: ArqRedis, request_id: uuid.UUID) -> str:
    """Queue a training run on stored history; the job id, for following it."""
    job_id = retrain_job_id(request_id)
    await redis.enqueue_job(RETRAIN_FUNCTION, str(request_id), _job_id=job_id)
    return job_id


class JobState(StrEnum):
    """Where a queued job is: waiting, running, done (well or not), or no longer known."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobReport:
    """A job as its caller follows it; `result` is what the job returned (JSON values), or
    the error it failed with."""

    job_id: str
    state: JobState
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: str | None = None


async def job_report(redis: ArqRedis, job_id: str) -> JobReport:
    """Where the job is now. A finished job's result is kept for `REQUESTED_JOB_KEEP_SECONDS`;
    after that (or for an id never queued) the state is UNKNOWN."""
    job = Job(job_id, redis, _queue_name=redis.default_queue_name)
    status = await job.status()
    if status in (JobStatus.queued, JobStatus.deferred, JobStatus.in_progress):
        info = await job.info()
        return JobReport(
            job_id,
            JobState.RUNNING if status is JobStatus.in_progress else JobState.QUEUED,
            enqueued_at=None if info is None else info.enqueue_time,
        )
    if status is not JobStatus.complete:
        return JobReport(job_id, JobState.UNKNOWN)
    done = await job.result_info()
    if done is None:
        return JobReport(job_id, JobState.UNKNOWN)
    plain = json.loads(json.dumps(done.result, default=str))
    return JobReport(
        job_id,
        JobState.SUCCEEDED if done.success else JobState.FAILED,
        enqueued_at=done.enqueue_time,
        started_at=done.start_time,
        finished_at=done.finish_time,
        result=plain if done.success else None,
        error=None if done.success else f"{type(done.result).__name__}: {done.result}"[:500],
    )


# How long the result of a requested job stays readable.
REQUESTED_JOB_KEEP_SECONDS = 7 * 24 * 3600
