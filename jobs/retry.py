"""Retry engine jobs: decide, claim due payments, charge, reconcile stuck ones, send webhooks."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from arq import Retry
from sqlalchemy.exc import DBAPIError

from app.enums import AttemptStatus
from app.services.model_registry import record_decisions
from app.services.retry.engine import claim_due as claim_service
from app.services.retry.engine import decide_pending as decide_service
from app.services.retry.sweeps import expire_windows, redecide_scheduled
from app.tenancy import SYSTEM_SCOPE
from app.workflows.end_actions import run_end_actions
from app.workflows.retry_attempt import default_adapters, execute_attempt
from app.workflows.retry_attempt import reconcile_stuck as reconcile_service
from app.workflows.webhook_delivery import deliver_due, dispatch_outbox
from jobs.context import WorkerContext
from jobs.enqueue import enqueue_attempt
from jobs.model import serving_scheduler, store_decisions
from jobs.telemetry import heartbeat_ages

logger = structlog.get_logger("portal.jobs")

CLAIM_BATCH = 200
# Claim batches run in this many transactions at once, as decide's do (`DECIDE_LANES`).
CLAIM_LANES = 2
# Charge jobs queued at once after a claim batch commits.
ENQUEUE_AT_ONCE = 50
DECIDE_BATCH = 500
# Decide batches run in this many transactions at once, each on payments of its own (every
# step takes its batch with `SKIP LOCKED`): while PostgreSQL works on one batch's statements,
# the worker decides another's payments, where one lane leaves each side idle in turn.
DECIDE_LANES = 2
# PostgreSQL's code for a transaction it failed to break a deadlock, and how many times a
# lane takes such a batch again in one run (`_lane`).
DEADLOCK = "40P01"
DEADLOCK_RETRIES = 3
# A cron run stops taking new batches after this long; the next tick resumes.
BUDGET_SECONDS = 40.0
MAX_DEFER_SECONDS = 300.0


_Step = Callable[..., Awaitable[int]]


async def decide_pending(ctx: WorkerContext) -> int:
    """Decide, batch by batch: PENDING payments waiting for a decision (new failures
    included), schedules made stale by a policy change or a new card, and payments whose
    retry window closed while nothing decided them (a paused merchant's, for one). Each step
    runs in `DECIDE_LANES` lanes at once; the next step starts when every lane is done."""
    deadline = time.monotonic() + BUDGET_SECONDS
    total = 0
    for step in (decide_service, redecide_scheduled, expire_windows):
        async with asyncio.TaskGroup() as lanes:
            done = [lanes.create_task(_lane(ctx, step, deadline)) for _ in range(DECIDE_LANES)]
        total += sum(d.result() for d in done)
    return total


async def _lane(ctx: WorkerContext, step: _Step, deadline: float) -> int:
    """One decide step's batches (`_batches`)."""
    # Payments under the model strategy are decided by the champion (or the fixed schedule,
    # with the reason, when there is none); its decisions and explanations commit with them:
    # each lane has a scheduler of its own, so a batch records only its own decisions.
    scheduler = await serving_scheduler(ctx["db"])

    async def batch() -> int:
        try:
            async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
                now = ctx["clock"].now()
                done = await step(uow, now=now, limit=DECIDE_BATCH, scheduler=scheduler)
                await record_decisions(uow, scheduler.take_decisions())
                await uow.commit()
        except DBAPIError:
            scheduler.take_decisions()  # the rolled-back batch's, recorded with nothing
            raise
        return done

    return await _batches(batch, step.__name__, DECIDE_BATCH, deadline)


async def _batches(
    batch: Callable[[], Awaitable[int]], name: str, size: int, deadline: float
) -> int:
    """Run `batch` (one transaction, returning how many payments it took) until one comes
    back short of `size` or the run's time is up; the payments taken in all.

    A batch PostgreSQL ends to break a deadlock is taken again, up to `DEADLOCK_RETRIES`
    times: two lanes each holding a payment whose stop-payment order makes the other's batch
    lock it (two payments of one subscription, either side of the lanes' split) wait on each
    other until PostgreSQL fails one. The other lane then goes on and ends both payments; the
    failed lane's batch, taken again, no longer finds them. Failing the whole run instead
    would cut the same batches on the next tick and meet the same deadlock."""
    total = 0
    deadlocks = 0
    while time.monotonic() < deadline:
        try:
            done = await batch()
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) != DEADLOCK or deadlocks >= DEADLOCK_RETRIES:
                raise
            deadlocks += 1
            logger.warning("batch_deadlock", step=name, retry=deadlocks)
            continue
        total += done
        if done < size:
            break
    return total


async def claim_due(ctx: WorkerContext) -> int:
    """Claim due payments batch by batch, in `CLAIM_LANES` lanes at once, and queue one charge
    job per claimed attempt.

    Each batch commits before its jobs are queued: a job never runs for an attempt that is
    not stored. A crash between commit and enqueue leaves the payment RETRYING, and
    `reconcile_stuck` runs its attempt later. Lanes take their payments with `SKIP LOCKED` and
    their cards' and customers' locks without waiting (`claim_service`), so they split the
    due set; a payment whose locks another lane holds waits for the next tick. A lane stops
    while the queue holds `_backlog_limit` jobs ready to start or running (`_ready_jobs`).
    """
    deadline = time.monotonic() + BUDGET_SECONDS
    queued = 0
    limit = await _backlog_limit(ctx)

    async def batch() -> int:
        nonlocal queued
        backlog = await _ready_jobs(ctx)
        if backlog >= limit:
            logger.info("claim_paused_for_backlog", ready_jobs=backlog, limit=limit)
            return 0
        async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
            applied = await claim_service(uow, now=ctx["clock"].now(), limit=CLAIM_BATCH)
            await uow.commit()
        added = await _enqueue_attempts(ctx, applied.enqueue)
        queued += added
        return len(applied.transitions)

    # Not a task group: a lane that fails must not cancel the other between its commit and
    # its enqueue, which would leave a whole batch to `reconcile_stuck`. Both settle first.
    lanes = await asyncio.gather(
        *(_batches(batch, "claim_due", CLAIM_BATCH, deadline) for _ in range(CLAIM_LANES)),
        return_exceptions=True,
    )
    for lane in lanes:
        if isinstance(lane, BaseException):
            raise lane
    return queued


async def _backlog_limit(ctx: WorkerContext) -> int:
    """Jobs in the queue at which claiming stops: `claim_queue_limit` waiting, beside the
    charges the live workers (fresh heartbeats, this one at least) may be running, since
    arq keeps a running job in the queue until it ends."""
    settings = ctx["settings"]
    redis = ctx["redis"]
    ages = await heartbeat_ages(
        redis, ttl=settings.worker_heartbeat_ttl_seconds, queue=redis.default_queue_name
    )
    workers = max(1, sum(1 for age in ages.values() if age <= settings.worker_stale_after_seconds))
    return settings.claim_queue_limit + workers * settings.worker_charge_concurrency


async def _ready_jobs(ctx: WorkerContext) -> int:
    """Jobs in the queue due to start now, running ones included (deferred ones not).

    The queue is first in, first out: a cron run (decide, claim, polls, webhook delivery,
    the event feed) queued behind a billing day's charge jobs starts only once they have
    started. Claiming stops at `_backlog_limit`, so the backlog waiting stays within about
    one claim interval of charging, and the payments left due are claimed by later ticks."""
    redis = ctx["redis"]
    now_ms = int(time.time() * 1000)
    # The queue the charge jobs are put on (`enqueue_attempt`): the pool's own.
    return int(await redis.zcount(redis.default_queue_name, "-inf", now_ms))


async def _enqueue_attempts(ctx: WorkerContext, attempts: Sequence[tuple[uuid.UUID, int]]) -> int:
    """Queue the claimed attempts' jobs, `ENQUEUE_AT_ONCE` Redis calls in flight: one at a
    time, a batch's round trips took longer than claiming it."""
    queued = 0
    for start in range(0, len(attempts), ENQUEUE_AT_ONCE):
        chunk = attempts[start : start + ENQUEUE_AT_ONCE]
        added = await asyncio.gather(
            *(enqueue_attempt(ctx["redis"], p, n) for p, n in chunk), return_exceptions=True
        )
        for outcome in added:
            # Every call of the chunk has settled: the first failure (Redis gone) ends the
            # run; the attempts left unqueued are run by `reconcile_stuck`.
            if isinstance(outcome, BaseException):
                raise outcome
        queued += sum(1 for outcome in added if outcome)
    return queued


async def attempt_payment(
    ctx: WorkerContext, payment_id: str, attempt_number: int
) -> dict[str, Any]:
    """Charge (or reconcile) one claimed attempt; an unanswered charge is retried by its key."""
    scheduler = await serving_scheduler(ctx["db"])
    result = await execute_attempt(
        ctx["db"],
        payment_id=uuid.UUID(payment_id),
        attempt_number=attempt_number,
        adapters=default_adapters(ctx["http"], ctx["box"]),
        clock=ctx["clock"],
        scheduler=scheduler,
    )
    await store_decisions(ctx["db"], scheduler)
    if result.status is AttemptStatus.PENDING:
        defer = result.retry_after or min(MAX_DEFER_SECONDS, 2.0 ** ctx["job_try"])
        logger.warning(
            "charge unanswered; retrying with the same key",
            payment_id=payment_id,
            attempt=attempt_number,
            reason=result.detail,
            defer=defer,
        )
        raise Retry(defer=defer)
    logger.info(
        "attempt",
        payment_id=payment_id,
        attempt=attempt_number,
        status=str(result.status),
        state=str(result.state) if result.state else None,
    )
    return {"status": str(result.status), "state": str(result.state) if result.state else None}


async def reconcile_stuck(ctx: WorkerContext) -> dict[str, int]:
    """Payments left RETRYING (a killed worker, a lost job) are finished by their attempt key."""
    results = await reconcile_service(
        ctx["db"], adapters=default_adapters(ctx["http"], ctx["box"]), clock=ctx["clock"]
    )
    counts: dict[str, int] = {}
    for r in results:
        status = str(r.status)
        counts[status] = counts.get(status, 0) + 1
    if results:
        logger.warning("reconciled stuck attempts", **counts)
    return counts


async def carry_out_end_actions(ctx: WorkerContext) -> dict[str, int]:
    """End actions due at the processor (a subscription to cancel): one try each; a failed try
    waits and is tried again by a later tick under the same idempotency key."""
    counts = await run_end_actions(
        ctx["db"], adapters=default_adapters(ctx["http"], ctx["box"]), clock=ctx["clock"]
    )
    if counts:
        logger.info("end actions", **counts)
    return counts


async def deliver_webhooks(ctx: WorkerContext) -> dict[str, int]:
    """Fan the outbox out to merchant endpoints, then send what is due (at least once)."""
    async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
        dispatched = await dispatch_outbox(uow, now=ctx["clock"].now())
        await uow.commit()
    counts = await deliver_due(
        ctx["db"],
        http=ctx["webhook_http"],
        box=ctx["box"],
        clock=ctx["clock"],
        policy=ctx["settings"].url_policy,
        resolve=ctx["resolve"],
    )
    return {"dispatched": dispatched, **counts}
