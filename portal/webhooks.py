"""Webhook endpoints: Adyen's AUTHORISATION notifications."""

import logging
import uuid

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from app.crypto import CredentialBox
from app.errors import InvalidArgument, NotFound
from app.outages import Dependency, outage_of
from app.workflows.processor_webhook import InvalidSignature, receive_adyen
from jobs.enqueue import enqueue_normalize

logger = logging.getLogger("portal.webhooks")

MAX_BODY_BYTES = 5 * 1024 * 1024


async def adyen_webhook(request: Request) -> Response:
    """Verify, land raw, acknowledge with `[accepted]`; normalization runs as a job.

    With the database unreachable nothing is stored and the outage propagates to the app's
    outage handler: a 503 with `Retry-After`, and Adyen delivers the batch again later (rows
    stored just before the connection dropped are deduplicated by content hash). With
    Redis unreachable once the rows are stored, the batch is still acknowledged: the rows are
    safe, and the `sweep_unnormalized` cron queues their normalization when Redis is back."""
    try:
        connection_id = uuid.UUID(request.path_params["connection_id"])
    except ValueError:
        return PlainTextResponse("unknown connection", status_code=404)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return PlainTextResponse("payload too large", status_code=413)
    state = request.app.state
    box: CredentialBox = state.box
    try:
        new_ids = await receive_adyen(state.db, connection_id, body, box=box, now=state.clock.now())
    except InvalidSignature:
        logger.warning("adyen webhook with a bad signature for connection %s", connection_id)
        return PlainTextResponse("invalid signature", status_code=401)
    except NotFound as exc:
        return PlainTextResponse(exc.message, status_code=404)
    except InvalidArgument as exc:
        return PlainTextResponse(exc.message, status_code=400)
    if new_ids and state.arq is not None:
        try:
            await enqueue_normalize(state.arq, connection_id)
        except Exception as exc:
            if outage_of(exc) is not Dependency.REDIS:
                raise
            logger.warning(
                "adyen webhook for connection %s stored %d records; normalization not queued, "
                "Redis unavailable (%s): the sweep will queue it",
                connection_id,
                len(new_ids),
                type(exc).__name__,
            )
    return PlainTextResponse("[accepted]")
