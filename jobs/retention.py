"""The retention cron: prune outbox events and webhook deliveries past their window."""

import structlog

from app.services.retention import prune_history as prune_service
from jobs.context import WorkerContext

logger = structlog.get_logger("portal.jobs")


async def prune_history(ctx: WorkerContext) -> dict[str, int]:
    """Delete what the retention settings let go, in short batches (see app/services/retention)."""
    settings = ctx["settings"]
    pruned = await prune_service(
        ctx["db"],
        now=ctx["clock"].now(),
        outbox_days=settings.outbox_retention_days,
        delivery_days=settings.webhook_delivery_retention_days,
    )
    counts = {"deliveries": pruned.deliveries, "events": pruned.events}
    if pruned.deliveries or pruned.events:
        logger.info("history pruned", **counts)
    return counts
