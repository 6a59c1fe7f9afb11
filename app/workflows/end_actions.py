"""Carrying out end actions at the processor: one try per due run, its outcome committed.

Each run is leased and its try counted before the processor is called (`claim_end_actions`),
the call carries the run's own idempotency key (the same on every try), and the outcome is
committed with the outbox event only if the run is still pending. A worker killed mid-call
leaves the run to be tried again when its lease ends; the processor sees the same key (Stripe
replays its answer) or answers that the subscription is canceled already (Braintree), so the
subscription is canceled once and announced once.
"""

import logging
from collections import Counter

from app.clock import Clock
from app.db import Database
from app.enums import ConnectionStatus, EndAction, EndActionStatus, PaymentState
from app.processors.base import ProcessorError, UnsupportedByProcessor
from app.services.retry.end_actions import ClaimedEndAction, claim_end_actions, settle_end_action
from app.tenancy import SYSTEM_SCOPE
from app.workflows.retry_attempt import AdapterFactory

logger = logging.getLogger(__name__)


def end_action_key(run: ClaimedEndAction) -> str:
    """The processor idempotency key of an end action: the same for every try."""
    return f"end-action-{run.id}"


async def run_end_actions(
    db: Database, *, adapters: AdapterFactory, clock: Clock, limit: int = 50
) -> dict[str, int]:
    """Try every due end action once; counts the outcomes ("retry" for a failed try)."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        claimed = await claim_end_actions(uow, now=clock.now(), limit=limit)
        await uow.commit()
    counts: Counter[str] = Counter()
    for run in claimed:
        status, detail = await _carry_out(run, adapters)
        async with db.uow(SYSTEM_SCOPE) as uow:
            after = await settle_end_action(
                uow, run.id, status=status, detail=detail, now=clock.now()
            )
            await uow.commit()
        if status is None:
            logger.warning(
                "end action failed",
                extra={"end_action_id": str(run.id), "try": run.tries, "why": detail},
            )
        outcome = "settled_elsewhere" if after is None else str(status or "retry")
        if after is EndActionStatus.FAILED:
            outcome = str(after)
        counts[outcome] += 1
    return dict(counts)


async def _carry_out(
    run: ClaimedEndAction, adapters: AdapterFactory
) -> tuple[EndActionStatus | None, str]:
    """One try at the processor: the status to record (None: failed, retry) and its detail."""
    if run.payment_state is PaymentState.RECOVERED:
        return EndActionStatus.SKIPPED, "the invoice was paid before the end action ran"
    if run.action is not EndAction.CANCEL_SUBSCRIPTION:
        return EndActionStatus.NOT_SUPPORTED, f"no processor action for {run.action}"
    if run.connection is None:
        return EndActionStatus.NOT_SUPPORTED, "the payment has no processor connection"
    if run.connection.status is ConnectionStatus.DISCONNECTED:
        return EndActionStatus.NOT_SUPPORTED, "the processor connection was disconnected"
    try:
        adapter = adapters(run.connection)
        result = await adapter.cancel_subscription(run.refs, idempotency_key=end_action_key(run))
    except UnsupportedByProcessor as exc:
        return EndActionStatus.NOT_SUPPORTED, str(exc)
    except ProcessorError as exc:
        return None, str(exc)
    already = " (it was canceled already)" if result.already else ""
    detail = f"subscription {result.subscription_ref} canceled at {run.connection.kind}{already}"
    return EndActionStatus.DONE, detail
