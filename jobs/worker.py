"""arq worker settings: the registered jobs, the cron schedule, start-up and shutdown."""

from collections.abc import Sequence
from typing import Any

from arq import cron, func
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function

from app.settings import Settings, get_settings
from jobs.context import shutdown, startup
from jobs.ingest import enqueue_polls, normalize_connection, poll_connection
from jobs.instrument import instrument
from jobs.outages import Backoff
from jobs.retry import (
    attempt_payment,
    claim_due,
    decide_pending,
    deliver_webhooks,
    reconcile_stuck,
)
from jobs.supervisor import PortalWorker
from jobs.training import retrain_model

FUNCTIONS = [
    # keep_result=0: the deterministic job id must free up as soon as a poll ends.
    func(poll_connection, timeout=300, keep_result=0, max_tries=10),  # type: ignore[arg-type]
    func(normalize_connection, timeout=300, keep_result=0, max_tries=10),  # type: ignore[arg-type]
    # Unanswered charges are retried with the same key; beyond max_tries reconcile_stuck
    # takes over. The kept result keeps a duplicate enqueue of a finished attempt a no-op.
    func(attempt_payment, timeout=60, keep_result=3600, max_tries=20),  # type: ignore[arg-type]
]
_EVERY_10S = set(range(0, 60, 10))
CRON_JOBS = [
    cron(enqueue_polls, second=_EVERY_10S, unique=True, timeout=60),  # type: ignore[arg-type]
    cron(decide_pending, second=_EVERY_10S, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(claim_due, second=_EVERY_10S, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(reconcile_stuck, second={5}, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(deliver_webhooks, second=_EVERY_10S, unique=True, timeout=55),  # type: ignore[arg-type]
    # Weekly challenger from stored history (Monday 03:17 UTC). Training runs in an executor.
    # arq keeps every job's in-progress key for the longest timeout + 10 s, so a longer one here
    # would delay re-delivery of every killed job: it stays at the polls' 300 s (stored history
    # is read up to 500,000 failures; a run that needs longer is a signal to sample).
    cron(
        retrain_model,  # type: ignore[arg-type]
        weekday=0,
        hour=3,
        minute=17,
        second=0,
        unique=True,
        timeout=300,
    ),
]


def redis_settings(url: str | None = None) -> RedisSettings:
    settings = get_settings()
    return RedisSettings.from_dsn(url or settings.redis_url or settings.local_redis_url)


def build_worker(
    redis_url: str,
    ctx: dict[str, Any],
    *,
    functions: Sequence[Function] = FUNCTIONS,
    cron_jobs: Sequence[CronJob] = CRON_JOBS,
    **kwargs: Any,
) -> PortalWorker:
    """A worker on the given Redis with a pre-filled context (CLI, demo, tests), every job
    wrapped (runs counted, outages re-queued); run it with `jobs.supervisor.Supervisor`."""
    settings: Settings = ctx.get("settings") or get_settings()
    backoff = Backoff.from_settings(settings)
    worker = PortalWorker(
        functions=functions,
        cron_jobs=cron_jobs,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx=ctx,
        backoff=backoff,
        **kwargs,
    )
    instrument(worker, worker.outages, backoff)
    return worker


class WorkerSettings:
    """For `arq jobs.worker.WorkerSettings` (REDIS_URL and DATABASE_URL from the environment).

    arq's own runner has none of `portal worker`'s supervision: it exits on a Redis outage,
    writes no heartbeat and does not count runs. Use it only to debug arq itself.
    """

    functions = FUNCTIONS
    cron_jobs = CRON_JOBS
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = redis_settings()
