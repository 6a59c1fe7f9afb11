"""Support's bulk actions, one job each (see app/services/bulk_action.py)."""

import time
import uuid
from typing import Any

import structlog
from arq import Retry

from app.enums import BulkActionStatus
from app.outages import outage_of
from app.services.bulk_action import finish, run
from jobs.context import WorkerContext

logger = structlog.get_logger("portal.jobs")

# A run stops taking new batches after this long and queues itself again to go on: well
# within the job's timeout, so arq never cancels it midway.
BUDGET_SECONDS = 240.0


async def run_bulk_action(ctx: WorkerContext, action_id: str) -> dict[str, Any]:
    """Carry out one bulk action. A run again after a crash, an outage or its time budget
    resumes it; one after it ended does nothing. Any other failure ends it FAILED with the
    error's type (its audit entry counts what was done until then)."""
    key = uuid.UUID(action_id)
    deadline = time.monotonic() + BUDGET_SECONDS
    try:
        action = await run(ctx["db"], key, clock=ctx["clock"], deadline=deadline)
    except Exception as exc:
        if outage_of(exc) is not None:
            raise  # re-queued by the job wrapper; the next run resumes
        logger.exception("bulk action failed", bulk_action_id=action_id)
        await finish(ctx["db"], key, now=ctx["clock"].now(), error=f"failed: {type(exc).__name__}")
        raise
    if action is None:
        return {"bulk_action_id": action_id, "ran": False}
    if action.status is BulkActionStatus.RUNNING:
        raise Retry(defer=0.1)
    return {
        "bulk_action_id": action_id,
        "ran": True,
        "status": action.status.value,
        "succeeded": action.succeeded_count,
        "skipped": action.skipped_count,
    }
