"""The event feed's cron: committed outbox events get their feed positions, then a notice
tells every API process which merchants' feeds grew (their subscribers read the rows)."""

import time

import structlog

from app.event_notices import publish
from app.outages import Dependency, outage_of
from app.services.event_feed import SEQUENCE_BATCH, sequence_events
from app.tenancy import SYSTEM_SCOPE
from jobs.context import WorkerContext

logger = structlog.get_logger("portal.jobs")

# A run stops taking new batches after this long (a backlog after an outage); the next
# second's run resumes.
BUDGET_SECONDS = 0.8


async def publish_events(ctx: WorkerContext) -> int:
    """Position waiting events batch by batch, each batch committed before its notice; the
    number of events positioned."""
    deadline = time.monotonic() + BUDGET_SECONDS
    total = 0
    while True:
        async with ctx["db"].uow(SYSTEM_SCOPE) as uow:
            done = await sequence_events(uow, limit=SEQUENCE_BATCH)
            await uow.commit()
        if not done.events:
            break
        try:
            await publish(ctx["redis"], done.merchants)
        except Exception as exc:
            # The positions are committed: subscribers find the events when they next read
            # the database (on reconnecting to Redis, or their periodic read).
            if outage_of(exc) is not Dependency.REDIS:
                raise
            logger.warning("event notice not published", error=type(exc).__name__)
        total += done.events
        if done.events < SEQUENCE_BATCH or time.monotonic() >= deadline:
            break
    return total
