"""Jobs support requests through the API (replayConnection, retrainModel).

Each request is an audit entry committed with the request; the job is queued just before that
commit and named after the entry (`jobs/enqueue.py`). A job first checks that its entry was
committed: one whose request was rolled back after it was queued does nothing, so no work runs
unaudited. A job can start before the request's commit lands; it then waits a moment and looks
again, up to `REQUEST_CHECKS` times.
"""

import uuid
from typing import Any

import structlog
from arq import Retry

from app.services.audit import entry_exists
from app.tenancy import SYSTEM_SCOPE
from app.workflows.replay import replay_connection
from jobs.context import WorkerContext
from jobs.training import train_from_history

logger = structlog.get_logger("portal.jobs")

REQUEST_CHECKS = 5
REQUEST_CHECK_DELAY_SECONDS = 1.0


async def _request_committed(ctx: WorkerContext, request_id: str) -> bool:
    """True once the request's audit entry is committed; raises arq's Retry while it may still
    be on its way; False when it never came (the job then does nothing)."""
    async with ctx["db"].session(SYSTEM_SCOPE) as session:
        if await entry_exists(session, uuid.UUID(request_id)):
            return True
    if ctx["job_try"] < REQUEST_CHECKS:
        raise Retry(defer=REQUEST_CHECK_DELAY_SECONDS)
    logger.warning("requested job dropped: its request was never committed", request=request_id)
    return False


DROPPED = {"status": "dropped", "reason": "the request was not committed"}


async def replay_connection_requested(
    ctx: WorkerContext, connection_id: str, request_id: str
) -> dict[str, Any]:
    """Re-normalize a connection's whole raw history with the current normalizer."""
    if not await _request_committed(ctx, request_id):
        return DROPPED
    stats = await replay_connection(
        ctx["db"], uuid.UUID(connection_id), since=None, clock=ctx["clock"]
    )
    logger.info("replayed", connection_id=connection_id, request=request_id, **vars(stats))
    return {"status": "replayed", **vars(stats)}


async def retrain_model_requested(ctx: WorkerContext, request_id: str) -> dict[str, Any]:
    """Train a challenger on stored history and record the gate's verdict (as the weekly job
    does); too little history is a result, not a failure."""
    if not await _request_committed(ctx, request_id):
        return DROPPED
    try:
        outcome = await train_from_history(ctx["db"], now=ctx["clock"].now())
    except ValueError as exc:
        return {"status": "skipped", "reason": str(exc)}
    logger.info("challenger trained on request", model_id=outcome.model_id, request=request_id)
    return {
        "status": "trained",
        "model_id": outcome.model_id,
        "metrics": {k: outcome.metrics.get(k) for k in ("auc", "log_loss", "ece")},
        "gate": outcome.gate,
    }
