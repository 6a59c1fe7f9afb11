"""Ingestion jobs: the poll fan-out, polling one connection, normalizing landed records."""

import time
import uuid
from datetime import timedelta
from typing import Any

import structlog
from arq import Retry

from app.models.ingestion import ProcessorConnection
from app.processors.base import TransientProcessorError
from app.services.connection import active_connection_ids
from app.services.ingestion import (
    IngestStats,
    connections_with_pending_raw,
    normalize_raw_records,
    pending_raw_ids,
)
from app.tenancy import SYSTEM_SCOPE
from app.workflows.polling import poll_connection as poll_service
from jobs.context import WorkerContext
from jobs.enqueue import enqueue_normalize, enqueue_poll

logger = structlog.get_logger("portal.jobs")

# One poll job reads pages until caught up or this budget is spent; the next cron tick resumes.
POLL_BUDGET_SECONDS = 120.0
MAX_DEFER_SECONDS = 300.0
# A webhook's rows are normally queued for normalization within milliseconds of landing; the
# sweep leaves younger rows to that path.
SWEEP_GRACE = timedelta(seconds=10)


async def enqueue_polls(ctx: WorkerContext) -> int:
    """Cron fan-out: one poll per active connection, deduplicated by job id."""
    async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
        ids = await active_connection_ids(uow)
    queued = [cid for cid in ids if await enqueue_poll(ctx["redis"], cid)]
    return len(queued)


async def poll_connection(ctx: WorkerContext, connection_id: str) -> dict[str, Any]:
    """Poll one connection until caught up (bounded); transient failures retry with backoff."""
    deadline = time.monotonic() + POLL_BUDGET_SECONDS
    total = IngestStats()
    pages = 0
    while True:
        try:
            result = await poll_service(
                ctx["db"],
                uuid.UUID(connection_id),
                client=ctx["http"],
                box=ctx["box"],
                clock=ctx["clock"],
            )
        except TransientProcessorError as exc:
            defer = exc.retry_after or min(MAX_DEFER_SECONDS, 2.0 ** ctx["job_try"])
            logger.warning(
                "poll deferred", connection_id=connection_id, reason=str(exc), defer=defer
            )
            raise Retry(defer=defer) from exc
        total.add(result.stats)
        pages += result.pages
        if result.error:
            logger.error("poll failed", connection_id=connection_id, reason=result.error)
        if not result.more or time.monotonic() > deadline:
            break
    logger.info("polled", connection_id=connection_id, pages=pages, **vars(total))
    return {"pages": pages, **vars(total)}


async def normalize_connection(ctx: WorkerContext, connection_id: str) -> dict[str, Any]:
    """Normalize every landed record not yet normalized (webhook deliveries)."""

    total = IngestStats()
    cid = uuid.UUID(connection_id)
    while True:
        async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
            ids = await pending_raw_ids(uow, cid, limit=1000)
            if not ids:
                break
            connection = await uow.session.get(ProcessorConnection, cid)
            if connection is None:
                break
            total.add(await normalize_raw_records(uow, connection, ids, now=ctx["clock"].now()))
            await uow.commit()
    return vars(total)


async def sweep_unnormalized(ctx: WorkerContext) -> int:
    """Cron: queue `normalize_connection` for every connection with landed rows still waiting
    for the normalizer, so none waits forever.

    A webhook stores its rows, then queues their normalization; when Redis was unreachable at
    that moment the rows are stored but nothing is queued. A delivery that lands while the
    connection's normalize job is finishing is deduplicated against that job (same job id)
    and stranded the same way. Idempotent: the deterministic job id makes a second enqueue a
    no-op while one is queued or running. Returns how many were queued.
    """
    before = ctx["clock"].now() - SWEEP_GRACE
    async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
        ids = await connections_with_pending_raw(uow, received_before=before)
    queued = [cid for cid in ids if await enqueue_normalize(ctx["redis"], cid)]
    if queued:
        logger.info("queued normalization of waiting records", connections=len(queued))
    return len(queued)
