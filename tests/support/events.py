"""Outbox events written the way the retry engine writes them, and positioned as the cron does."""

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from strawberry.types import ExecutionResult

from app.clock import Clock
from app.db import Database
from app.event_notices import EventNotices
from app.models.payment import Payment
from app.services.event_feed import Sequenced, sequence_events
from app.services.retry.outbox import emit, event_payload
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from app.workflows.authentication import authenticate
from resolvers.context import Context
from tests.support.graphql import schema_for


async def emit_events(
    db: Database, payment: Payment, names: Sequence[str], *, now: datetime
) -> None:
    """One committed transaction writing an event of each name for `payment`."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        for name in names:
            extra = {}
            if name.startswith("payment.end_action"):
                extra = {"end_action": "cancel_subscription", "end_action_status": "done"}
                extra["detail"] = "canceled at the processor"
            payload = event_payload(payment, name, payment.state, f"test {name}", **extra)
            emit(uow, payment, name, payload, now)
        await uow.commit()


async def sequence(db: Database) -> Sequenced:
    """Position every waiting event, committed (what `publish_events` does before notifying)."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        done = await sequence_events(uow)
        await uow.commit()
    return done


async def first_results(
    db: Database,
    settings: Settings,
    clock: Clock,
    query: str,
    *,
    token: str | None,
    notices: EventNotices,
    count: int,
    variables: dict[str, Any] | None = None,
) -> list[ExecutionResult]:
    """The first `count` results of a subscription run in-process (fewer if it ends first)."""
    principal = None if token is None else await authenticate(db, token, now=clock.now())
    context = Context(db=db, principal=principal, clock=clock, settings=settings, notices=notices)
    stream = await schema_for(settings).subscribe(
        query, variable_values=variables, context_value=context
    )
    if isinstance(stream, ExecutionResult):
        return [stream]
    results: list[ExecutionResult] = []
    try:
        while len(results) < count:
            try:
                result = await asyncio.wait_for(anext(stream), 10)
            except StopAsyncIteration:
                break
            assert isinstance(result, ExecutionResult)
            results.append(result)
    finally:
        await stream.aclose()
    return results
