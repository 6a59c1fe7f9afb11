"""Support's requested jobs: replayConnection, retrainModel, and backgroundJob to follow one."""

from datetime import datetime
from typing import Annotated, Self

import strawberry
from strawberry.scalars import JSON

from app.errors import ErrorCode
from jobs.enqueue import JobReport, JobState
from resolvers import support_jobs as job_resolvers
from resolvers.context import Context
from schema.connection import IdArg, ProcessorConnection
from schema.mutation import Payload, ReasonArg, mutation

Info = strawberry.Info[Context, None]

strawberry.enum(JobState, name="BackgroundJobState", description="Where a background job is.")


@strawberry.type(
    description=(
        "Work queued for the worker on request (a replay, a training run): follow it with "
        "`backgroundJob(id:)`."
    )
)
class BackgroundJob:
    id: strawberry.ID = strawberry.field(
        description="The job's id (`replay:<request>` or `retrain:<request>`)."
    )
    state: JobState = strawberry.field(
        description=(
            "QUEUED or RUNNING; then SUCCEEDED or FAILED, readable for 7 days; UNKNOWN after "
            "that, or for an id never queued."
        )
    )
    enqueued_at: datetime | None = strawberry.field(description="When it was queued.")
    started_at: datetime | None = strawberry.field(description="When its last try started.")
    finished_at: datetime | None = strawberry.field(description="When it finished.")
    result: JSON | None = strawberry.field(
        description=(
            "What it did, once SUCCEEDED: a replay's counts (`normalized`, `dead_letters`, "
            "`payments_created` …); a training run's `status` (`trained` with `model_id`, "
            "metrics and the gate's verdict, or `skipped` with the reason); `dropped` when its "
            "request was never committed."
        )
    )
    error: str | None = strawberry.field(description="Why it failed, once FAILED.")

    @classmethod
    def from_report(cls, report: JobReport) -> Self:
        return cls(
            id=strawberry.ID(report.job_id),
            state=report.state,
            enqueued_at=report.enqueued_at,
            started_at=report.started_at,
            finished_at=report.finished_at,
            result=None if report.result is None else JSON(report.result),
            error=report.error,
        )


async def background_job(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="The job's id.")],
) -> BackgroundJob | None:
    report = await job_resolvers.follow(info.context, str(id))
    return None if report is None else BackgroundJob.from_report(report)


QUEUED_DESCRIPTION = (
    "True when this request queued the job; false when an earlier request's job was still "
    "queued or running, which `job` then is (nothing was added)."
)


class ReplayConnectionPayload(Payload):
    processor_connection: ProcessorConnection | None = strawberry.field(
        description="The connection, when the replay was requested."
    )
    job: BackgroundJob | None = strawberry.field(description="The replay job, to follow.")
    queued: bool = strawberry.field(default=False, description=QUEUED_DESCRIPTION)


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
    why="queued no replay",
    errors="Why no replay was requested",
    subject="id",
    description=(
        "Re-normalize a connection's whole raw history with the current normalizer, as a "
        "background job (support only; what `portal replay` does): clean rows are updated in "
        "place, records that still fail stay dead letters. Audited "
        "(`processor_connection.replay`, naming the job)."
    ),
)
async def replay_connection(info: Info, id: IdArg, reason: ReasonArg) -> ReplayConnectionPayload:
    row, report, queued = await job_resolvers.replay(info.context, global_id=str(id), reason=reason)
    return ReplayConnectionPayload(
        processor_connection=ProcessorConnection.from_model(row),
        job=BackgroundJob.from_report(report),
        queued=queued,
    )


class RetrainModelPayload(Payload):
    job: BackgroundJob | None = strawberry.field(description="The training job, to follow.")
    queued: bool = strawberry.field(default=False, description=QUEUED_DESCRIPTION)


@mutation(
    refuses=(ErrorCode.INVALID,),
    why="queued no training",
    errors="Why no training was requested",
    description=(
        "Train a retry-timing model on stored history now, as a background job (support "
        "only; what the weekly job and `portal train` do): it is stored as a challenger with "
        "the promotion gate's verdict, never promoted by this. Audited (`model.retrain`, "
        "naming the job)."
    ),
)
async def retrain_model(info: Info, reason: ReasonArg) -> RetrainModelPayload:
    report, queued = await job_resolvers.retrain(info.context, reason=reason)
    return RetrainModelPayload(job=BackgroundJob.from_report(report), queued=queued)
