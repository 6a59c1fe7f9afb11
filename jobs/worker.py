"""The arq worker: registered jobs, cron schedule, and the Worker class they run in."""

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog
from arq import cron, func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.cron import CronJob
from arq.worker import Function, Worker

from app.outages import outage_of
from app.settings import Settings, get_settings
from jobs.bulk import run_bulk_action
from jobs.context import shutdown, startup
from jobs.enqueue import (
    REPLAY_FUNCTION,
    REQUESTED_JOB_KEEP_SECONDS,
    RETRAIN_FUNCTION,
    is_attempt_job_id,
)
from jobs.events import publish_events
from jobs.ingest import enqueue_polls, normalize_connection, poll_connection, sweep_unnormalized
from jobs.instrument import instrument
from jobs.outages import Backoff, OutageTracker
from jobs.requested import replay_connection_requested, retrain_model_requested
from jobs.retention import maintain_partitions, prune_history
from jobs.retry import (
    CLAIM_BATCH,
    CLAIM_LANES,
    attempt_payment,
    carry_out_end_actions,
    claim_due,
    decide_pending,
    deliver_webhooks,
    reconcile_stuck,
)
from jobs.training import retrain_model

# arq keeps every started job's in-progress key for the longest job timeout + 10 s, so a job
# of a killed worker is delivered again only after that: no job may take longer than this.
MAX_JOB_SECONDS = 300

FUNCTIONS = [
    # keep_result=0: the deterministic job id must free up as soon as a poll ends.
    func(poll_connection, timeout=300, keep_result=0, max_tries=10),  # type: ignore[arg-type]
    func(normalize_connection, timeout=300, keep_result=0, max_tries=10),  # type: ignore[arg-type]
    # Unanswered charges are retried with the same key; beyond max_tries reconcile_stuck
    # takes over. The kept result keeps a duplicate enqueue of a finished attempt a no-op.
    func(attempt_payment, timeout=60, keep_result=3600, max_tries=20),  # type: ignore[arg-type]
    # One job per bulk action (its id deduplicates); a run again resumes what is left. Like a
    # poll it stays within 300 s (see retrain_model below): a run takes batches for 240 s,
    # then queues itself again (a try each: a million payments is far fewer than 1,000 runs).
    func(run_bulk_action, timeout=300, keep_result=0, max_tries=1000),  # type: ignore[arg-type]
    # Requested by support through the API: results kept for the caller to read. Within the
    # polls' 300 s like every job (see MAX_JOB_SECONDS): a replay commits batch by batch and is
    # idempotent, so one cut short by the timeout runs again and goes on.
    func(
        replay_connection_requested,  # type: ignore[arg-type]
        name=REPLAY_FUNCTION,
        timeout=MAX_JOB_SECONDS,
        keep_result=REQUESTED_JOB_KEEP_SECONDS,
        max_tries=24,
    ),
    func(
        retrain_model_requested,  # type: ignore[arg-type]
        name=RETRAIN_FUNCTION,
        timeout=MAX_JOB_SECONDS,
        keep_result=REQUESTED_JOB_KEEP_SECONDS,
        max_tries=6,
    ),
]
_EVERY_10S = set(range(0, 60, 10))
_EVERY_SECOND = set(range(60))
CRON_JOBS = [
    cron(enqueue_polls, second=_EVERY_10S, unique=True, timeout=60),  # type: ignore[arg-type]
    cron(sweep_unnormalized, second={25, 55}, unique=True, timeout=30),  # type: ignore[arg-type]
    cron(decide_pending, second=_EVERY_10S, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(claim_due, second=_EVERY_10S, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(reconcile_stuck, second={5}, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(carry_out_end_actions, second={15, 45}, unique=True, timeout=55),  # type: ignore[arg-type]
    cron(deliver_webhooks, second=_EVERY_10S, unique=True, timeout=55),  # type: ignore[arg-type]
    # Every second: how long after its commit an event reaches the feed and its subscribers.
    cron(publish_events, second=_EVERY_SECOND, unique=True, timeout=30),  # type: ignore[arg-type]
    cron(prune_history, minute={7, 37}, second=30, unique=True, timeout=55),  # type: ignore[arg-type]
    # At start-up too: a worker started after a pause finds the current month's partition made.
    cron(
        maintain_partitions,  # type: ignore[arg-type]
        minute=set(range(2, 60, 10)),
        second=40,
        unique=True,
        timeout=MAX_JOB_SECONDS,
        run_at_startup=True,
    ),
    # Weekly challenger from stored history (Monday 03:17 UTC). Training runs in an executor,
    # within MAX_JOB_SECONDS (stored history is read up to 500,000 failures; a run that needs
    # longer is a signal to sample).
    cron(
        retrain_model,  # type: ignore[arg-type]
        weekday=0,
        hour=3,
        minute=17,
        second=0,
        unique=True,
        timeout=MAX_JOB_SECONDS,
    ),
]


logger = structlog.stdlib.get_logger("portal.worker")

# Job ids a worker reads from the head of the queue each poll at least (arq's default is
# 5 * max_jobs, at least 100). A charge waiting for a slot stays queued ahead of what was
# queued after it, so any other job (the cron runs that claim, decide and publish, polls) is
# read only while fewer than this many jobs are ahead of it: `read_limit` makes it cover the
# charge backlog claiming allows. A read is one ZRANGEBYSCORE (about 50 bytes an id); a charge
# read while charge slots are full is passed over without a Redis command.
QUEUE_READ_LIMIT = 500


def read_limit(settings: Settings, max_jobs: int) -> int:
    """Job ids read each poll: the waiting jobs at which claiming stops, what claim lanes that
    each checked just below it may add (two runs of `CLAIM_LANES` lanes, a batch each), and
    the running jobs of about five workers (a running job stays in the queue until it ends,
    and claiming allows for the live workers' charges beside its limit). With more workers
    than that, a job behind the backlog is read once the running ones ahead of it end."""
    claims = 2 * CLAIM_LANES * CLAIM_BATCH
    return max(QUEUE_READ_LIMIT, settings.claim_queue_limit + claims + 5 * max_jobs)


# Cancelled jobs get this long to hand themselves back to the queue (one Redis write each).
CANCEL_WAIT_SECONDS = 5.0


async def settle(tasks: Iterable["asyncio.Task[Any]"], within: float | None = None) -> None:
    """Wait for `tasks` (bounded), and mark their errors as seen: they were logged where
    they arose, and asyncio would otherwise log each again when it is collected."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=within)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


class PortalWorker(Worker):
    """arq's Worker with what an outage breaks in it repaired; signals are the supervisor's.

    - Its Redis pool is connected with one attempt (arq's own start retries five times a
      second apart, then gives up for good): the supervisor's backoff does the waiting.
    - A job that finishes while Redis is down keeps its slot and writes its result once Redis
      answers, instead of failing the poll loop and leaving the job to run again.
    - A slot taken for a job whose start failed on Redis is given back: arq would keep it, and
      after a few outages the worker would take no jobs at all while looking alive.
    - `last_tick` is when the poll loop last completed a turn (the heartbeat needs it).
    - Charges (`is_attempt_job_id`) wait on a processor's answer and run together in shared
      statements, so they have slots of their own: at most `charge_concurrency` charges and
      `concurrency` other jobs run at once (arq's max_jobs is the sum). A job whose kind has
      no free slot is passed over and stays queued for a later poll.
    """

    def __init__(
        self,
        *args: Any,
        backoff: Backoff,
        concurrency: int,
        charge_concurrency: int,
        **kwargs: Any,
    ) -> None:
        if "max_jobs" in kwargs:
            raise TypeError(
                "a PortalWorker runs concurrency + charge_concurrency jobs at once; "
                "pass those instead of max_jobs"
            )
        if concurrency < 1 or charge_concurrency < 1:
            raise ValueError(
                f"concurrency and charge_concurrency must be at least 1, "
                f"not {concurrency} and {charge_concurrency}"
            )
        max_jobs = concurrency + charge_concurrency
        super().__init__(*args, handle_signals=False, max_jobs=max_jobs, **kwargs)
        self.concurrency = concurrency
        self.charge_concurrency = charge_concurrency
        # The tasks of the running jobs of each kind; a task leaves its set when it ends,
        # whether the job finished, failed or was cancelled.
        self.running_charges: set[asyncio.Task[Any]] = set()
        self.running_others: set[asyncio.Task[Any]] = set()
        self.backoff = backoff
        self.outages = OutageTracker()
        self.last_tick: float | None = None
        self.closing = False

    @property
    def redis(self) -> ArqRedis | None:
        """The worker's Redis pool, once connected."""
        return self._pool

    async def connect(self) -> ArqRedis:
        """Connect the pool if it is not (one attempt), or check that Redis answers."""
        if self._pool is None:
            settings = self.redis_settings
            if settings is None:
                raise RuntimeError("a worker without a pool needs redis_settings")
            self._pool = await create_pool(
                dataclasses.replace(settings, conn_retries=0),
                job_serializer=self.job_serializer,
                job_deserializer=self.job_deserializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        else:
            await self._pool.ping()
        return self._pool

    async def main(self) -> None:
        await self.connect()
        await super().main()

    async def heart_beat(self) -> None:
        await super().heart_beat()
        self.last_tick = time.monotonic()

    def _slots(self, job_id: str) -> tuple[set[asyncio.Task[Any]], int]:
        """The running tasks of the job's kind, and how many that kind may have."""
        if is_attempt_job_id(job_id):
            return self.running_charges, self.charge_concurrency
        return self.running_others, self.concurrency

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            name = job_id.decode()
            running, limit = self._slots(name)
            if len(running) >= limit:
                continue
            before = self.tasks.get(name)
            try:
                await super().start_jobs([job_id])
            except Exception:
                # arq counts the job and holds a semaphore slot from before its Redis
                # transaction until the job's task ends; no task was created.
                self._release_sem_dec_counter_on_complete()
                raise
            # arq keeps a finished job's task until the end of the poll: only a new one is
            # this start's (none when the job is running elsewhere or is gone).
            task = self.tasks.get(name)
            if task is not None and task is not before:
                running.add(task)
                task.add_done_callback(running.discard)
            if self.job_counter >= self.max_jobs:
                return

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is None:
                raise
            # Redis went away as the job was read or recorded: it stays queued, and its
            # in-progress key keeps it from running again until that key expires.
            logger.warning(
                "job left to run again later",
                job_id=job_id,
                dependency=dependency.value,
                error=type(exc).__name__,
            )

    async def _until_written(self, write: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            try:
                await write()
            except Exception as exc:
                if outage_of(exc) is None or self.closing:
                    raise
            else:
                return
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        parent = super().finish_job
        await self._until_written(
            lambda: parent(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        parent = super().finish_failed_job
        await self._until_written(lambda: parent(job_id, result_data))

    async def close(self) -> None:
        """Stop polling, cancel running jobs (arq queues them again), run the shutdown hook and
        close the pool, whether or not Redis answers."""
        self.closing = True
        if self.main_task is not None and not self.main_task.done():
            self.main_task.cancel()
        if self.main_task is not None:
            await settle([self.main_task])
        running = [t for t in self.tasks.values() if not t.done()]
        for task in running:
            task.cancel()
        await settle(list(self.tasks.values()), CANCEL_WAIT_SECONDS)
        self.tasks.clear()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


def build_worker(
    redis_url: str,
    ctx: dict[str, Any],
    *,
    functions: Sequence[Function] = FUNCTIONS,
    cron_jobs: Sequence[CronJob] = CRON_JOBS,
    concurrency: int | None = None,
    charge_concurrency: int | None = None,
    **kwargs: Any,
) -> PortalWorker:
    """A worker on the given Redis with a pre-filled context (CLI, demo, tests), every job
    wrapped (runs counted, outages re-queued); run it with `jobs.supervisor.Supervisor`. It
    takes jobs from the settings' queue (PORTAL_QUEUE_NAME) unless `queue_name` is given, and
    runs the settings' numbers of charges and other jobs at once unless given them."""
    settings: Settings = ctx.get("settings") or get_settings()
    backoff = Backoff.from_settings(settings)
    kwargs.setdefault("queue_name", settings.queue_name)
    others = settings.worker_concurrency if concurrency is None else concurrency
    charges = (
        settings.worker_charge_concurrency if charge_concurrency is None else charge_concurrency
    )
    kwargs.setdefault("queue_read_limit", read_limit(settings, others + charges))
    worker = PortalWorker(
        functions=functions,
        cron_jobs=cron_jobs,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx=ctx,
        backoff=backoff,
        concurrency=others,
        charge_concurrency=charges,
        **kwargs,
    )
    instrument(worker, worker.outages, backoff)
    return worker
