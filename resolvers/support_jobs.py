"""Support's requested jobs for the API: replay a connection, retrain the model, follow a job."""

from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis

from app.models.audit import AuditLog
from app.models.ingestion import ProcessorConnection
from app.services.support_requests import check_replay, check_retrain, record_request
from jobs.enqueue import (
    JobReport,
    enqueue_replay,
    enqueue_retrain,
    job_report,
    replay_job_id,
    retrain_job_id,
)
from resolvers.context import Context
from resolvers.ids import decode_id

# The job ids a caller may follow: those of requested work, never another job's.
FOLLOWED_PREFIXES = ("replay:", "retrain:")


async def _still_running(
    queue: ArqRedis, previous: AuditLog | None, job_id: Callable[[Any], str]
) -> JobReport | None:
    """The earlier request's job, when it is still queued or running."""
    if previous is None:
        return None
    report = await job_report(queue, job_id(previous.id))
    return report if report.state.active else None


async def replay(
    ctx: Context, *, global_id: str, reason: str
) -> tuple[ProcessorConnection, JobReport, bool]:
    """Queue a replay (support only); the job, and False when an earlier one still runs."""
    queue = ctx.job_queue()
    async with ctx.change() as (uow, by):
        _, connection_id = decode_id(global_id, expected="ProcessorConnection")
        connection, request = await check_replay(
            uow, principal=by["principal"], connection_id=connection_id, reason=reason
        )
        running = await _still_running(queue, request.previous, replay_job_id)
        if running is not None:
            return connection, running, False
        entry = await record_request(uow, request, job_id=replay_job_id, **by)
        job_id = await enqueue_replay(queue, connection.id, entry.id)
    return connection, await job_report(queue, job_id), True


async def retrain(ctx: Context, *, reason: str) -> tuple[JobReport, bool]:
    """Queue a training run (support only); the job, and False when an earlier one still runs."""
    queue = ctx.job_queue()
    async with ctx.change() as (uow, by):
        request = await check_retrain(uow, principal=by["principal"], reason=reason)
        running = await _still_running(queue, request.previous, retrain_job_id)
        if running is not None:
            return running, False
        entry = await record_request(uow, request, job_id=retrain_job_id, **by)
        job_id = await enqueue_retrain(queue, entry.id)
    return await job_report(queue, job_id), True


async def follow(ctx: Context, job_id: str) -> JobReport | None:
    """A requested job by id (support only); None for an id that names no requested job."""
    ctx.require_principal().require_support("follow jobs")
    if not job_id.startswith(FOLLOWED_PREFIXES) or len(job_id) > 100:
        return None
    return await job_report(ctx.job_queue(), job_id)
