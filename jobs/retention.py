"""The retention crons: prune outbox events and webhook deliveries past their window, and keep
the append-only tables' monthly partitions created ahead and archived when old.

Outbox events and deliveries are partitioned too: `maintain_partitions` drops their whole months
once past the window, and `prune_history` deletes, in batches, what a month boundary does not
cover (the rows of a month not yet over, or of one that something still holds)."""

import structlog

from app.models.partitioning import (
    MODEL_DECISION,
    OUTBOX_EVENT,
    PAYMENT_TRANSITION,
    RAW_RECORD,
    WEBHOOK_DELIVERY,
)
from app.services.partitions import ensure_partitions, expire_partitions
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


async def maintain_partitions(ctx: WorkerContext) -> dict[str, int]:
    """Keep the coming months' partitions created; archive and drop months past their window
    (app/services/partitions.py)."""
    settings = ctx["settings"]
    now = ctx["clock"].now()
    created = await ensure_partitions(
        ctx["db"], now=now, months_ahead=settings.partition_months_ahead
    )
    for c in created:
        logger.info("partition created", partition=c.partition, moved_rows=c.moved)
    archived = await expire_partitions(
        ctx["db"],
        now=now,
        retention_days={
            PAYMENT_TRANSITION.table: settings.timeline_retention_days,
            MODEL_DECISION.table: settings.model_decision_retention_days,
            RAW_RECORD.table: settings.raw_record_retention_days,
            # The windows `prune_history` applies row by row; whole months go here.
            OUTBOX_EVENT.table: settings.outbox_retention_days,
            WEBHOOK_DELIVERY.table: settings.webhook_delivery_retention_days,
        },
        archive_dir=settings.archive_dir,
    )
    for a in archived:
        logger.info(
            "partition archived and dropped",
            partition=a.partition,
            rows=a.rows,
            path=str(a.path),
            sha256=a.sha256,
        )
    return {"created": len(created), "archived": len(archived)}
