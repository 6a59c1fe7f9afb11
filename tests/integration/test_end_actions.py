"""End actions when recovery ends unpaid, against the sandbox processors over HTTP: the
subscription is canceled at the processor first, the outbox event written after; failures
are tried again under the same key, and every outcome is recorded and visible."""

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from app.db import Database
from app.enums import Actor, EndAction, EndActionStatus, PaymentState, Processor, RetryStrategy
from app.models.end_action import EndActionRun
from app.models.payment import Payment
from app.models.retry import OutboxEvent
from app.retry.events import DecisionMade, Event, PaidElsewhere
from app.services.connection import disconnect_connection
from app.services.retry.end_actions import LEASE, MAX_TRIES, backoff, claim_end_actions
from app.services.retry.engine import run_event
from app.services.retry.ledger import load_contexts
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.end_actions import end_action_key, run_end_actions
from app.workflows.retry_attempt import default_adapters
from sandbox.billing import Subscription
from tests.support.billing import Connected, SandboxWorld, connect_account, sandbox_world
from tests.support.billing import scheduled_payment as _scheduled
from tests.support.factories import set_strategy
from tests.support.retry import BOX, reload
from tests.support.sandbox import set_faults

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[SandboxWorld]:
    async with sandbox_world(NOW) as found:
        yield found


async def _run(world: SandboxWorld, db: Database) -> dict[str, int]:
    return await run_end_actions(db, adapters=default_adapters(world.http, BOX), clock=world.clock)


async def _event(db: Database, payment_id: uuid.UUID, event: Event, now: datetime) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        ctx = (await load_contexts(uow.session, [payment_id], now=now, lock=True))[payment_id]
        await run_event(uow, ctx, event, now=now)
        await uow.commit()


async def _connect(
    world: SandboxWorld,
    db: Database,
    processor: Processor,
    seed: int,
    end_action: EndAction = EndAction.CANCEL_SUBSCRIPTION,
) -> Connected:
    """An account ingested and decided under the default end action (history older than the
    window ends there), then switched to `end_action`."""
    connected = await connect_account(world, db, processor, seed=seed)
    merchant_id = connected.connection.merchant_id
    await set_strategy(db, merchant_id, RetryStrategy.FIXED_SCHEDULE, end_action=end_action)
    return connected


async def _exhaust(world: SandboxWorld, db: Database, connected: Connected) -> Payment:
    """A scheduled payment (one whose invoice names its subscription) ends unpaid."""
    payment = await _scheduled(db, connected, with_invoice=True)
    no_time = DecisionMade(None, "no worthwhile retry time", RetryStrategy.FIXED_SCHEDULE)
    await _event(db, payment.id, no_time, world.clock.now())
    after = await reload(db, payment.id)
    assert after.state is PaymentState.EXHAUSTED
    return after


async def _run_row(db: Database, payment_id: uuid.UUID) -> EndActionRun:
    async with db.session(SYSTEM_SCOPE) as s:
        found = await s.execute(
            select(EndActionRun)
            .where(col(EndActionRun.payment_id) == payment_id)
            .execution_options(populate_existing=True)
        )
        return found.scalar_one()


async def _end_events(db: Database, payment_id: uuid.UUID) -> list[dict[str, Any]]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(OutboxEvent)
            .where(
                col(OutboxEvent.payment_id) == payment_id,
                col(OutboxEvent.event_type).startswith("payment.end_action"),
            )
            .order_by(col(OutboxEvent.created_at))
        )
        return [{"type": e.event_type, **e.payload} for e in rows.scalars()]


def _subscription(world: SandboxWorld, connected: Connected, payment: Payment) -> Subscription:
    """The processor's own record of the payment's subscription."""
    account = world.state.accounts[connected.account_id]
    return account.billing.subscription_of(account.customer_of(payment.processor_payment_id, NOW))


@pytest.mark.parametrize(
    "processor", [Processor.STRIPE, Processor.BRAINTREE], ids=["stripe", "braintree"]
)
async def test_cancel_subscription_cancels_at_the_processor_then_announces_it(
    world: SandboxWorld, db: Database, processor: Processor
) -> None:
    connected = await _connect(world, db, processor, 61)
    payment = await _exhaust(world, db, connected)
    subscription = _subscription(world, connected, payment)
    # Ending the payment recorded the action, but nothing is announced before it is done.
    assert (await _run_row(db, payment.id)).status is EndActionStatus.PENDING
    assert await _end_events(db, payment.id) == []
    assert subscription.open

    assert await _run(world, db) == {"done": 1}

    assert (subscription.status, subscription.cancel_requests) == ("canceled", 1)
    row = await _run_row(db, payment.id)
    assert (row.status, row.tries) == (EndActionStatus.DONE, 1)
    assert row.detail == f"subscription {subscription.id} canceled at {processor.value}"
    [event] = await _end_events(db, payment.id)
    assert (event["type"], event["end_action"], event["end_action_status"]) == (
        "payment.end_action",
        "cancel_subscription",
        "done",
    )
    assert event["state"] == "EXHAUSTED"
    # Done is done: a later run calls nobody and announces nothing.
    world.clock.set(world.clock.now() + timedelta(hours=1))
    assert await _run(world, db) == {}
    assert subscription.cancel_requests == 1
    assert len(await _end_events(db, payment.id)) == 1


async def test_failed_cancel_is_tried_again_with_the_same_key_and_announced_once(
    world: SandboxWorld, db: Database
) -> None:
    connected = await _connect(world, db, Processor.STRIPE, 67)
    payment = await _exhaust(world, db, connected)
    subscription = _subscription(world, connected, payment)
    await set_faults(world.http, connected.account_id, server_error=3, writes=True)

    assert await _run(world, db) == {"retry": 1}

    row = await _run_row(db, payment.id)
    assert (row.status, row.tries) == (EndActionStatus.PENDING, 1)
    assert row.last_error is not None
    assert "HTTP 500" in row.last_error
    assert row.next_attempt_at == world.clock.now() + backoff(1)
    assert subscription.open
    assert await _end_events(db, payment.id) == []
    assert await _run(world, db) == {}  # not due before its backoff

    world.clock.set(world.clock.now() + backoff(1))
    assert await _run(world, db) == {"done": 1}

    assert subscription.status == "canceled"
    assert [e["end_action_status"] for e in await _end_events(db, payment.id)] == ["done"]


async def test_a_worker_dying_after_the_cancel_is_settled_once_by_the_next_try(
    world: SandboxWorld, db: Database
) -> None:
    """The first worker leased the run and canceled at the processor, then died before
    recording it. After the lease the next try sends the same key: Stripe replays its answer,
    the subscription was canceled once, and the event is written once."""
    connected = await _connect(world, db, Processor.STRIPE, 71)
    payment = await _exhaust(world, db, connected)
    subscription = _subscription(world, connected, payment)
    async with db.uow(SYSTEM_SCOPE) as uow:
        [leased] = await claim_end_actions(uow, now=world.clock.now(), limit=10)
        await uow.commit()
    adapter = default_adapters(world.http, BOX)(connected.connection)
    await adapter.cancel_subscription(leased.refs, idempotency_key=end_action_key(leased))
    assert subscription.status == "canceled"
    assert await _run(world, db) == {}  # leased: not due yet

    world.clock.set(world.clock.now() + LEASE)
    assert await _run(world, db) == {"done": 1}

    account = world.state.accounts[connected.account_id]
    assert subscription.cancel_requests == 1
    assert account.replays[end_action_key(leased)] == 1
    assert (await _run_row(db, payment.id)).tries == 2
    assert len(await _end_events(db, payment.id)) == 1


@pytest.mark.parametrize(
    "processor", [Processor.ADYEN, Processor.CHECKOUT], ids=["adyen", "checkout"]
)
async def test_processor_without_subscriptions_records_that_it_could_not_and_why(
    world: SandboxWorld, db: Database, processor: Processor
) -> None:
    connected = await _connect(world, db, processor, 73)
    payment = await _exhaust(world, db, connected)

    assert await _run(world, db) == {"not_supported": 1}

    row = await _run_row(db, payment.id)
    assert row.status is EndActionStatus.NOT_SUPPORTED
    assert row.detail is not None
    assert "keeps no subscription objects" in row.detail
    [event] = await _end_events(db, payment.id)
    assert event["end_action_status"] == "not_supported"
    assert event["detail"] == row.detail


async def test_leave_invoice_open_is_done_and_announced_with_the_end(
    world: SandboxWorld, db: Database
) -> None:
    connected = await _connect(world, db, Processor.STRIPE, 79, EndAction.LEAVE_INVOICE_OPEN)
    payment = await _exhaust(world, db, connected)

    row = await _run_row(db, payment.id)
    assert (row.status, row.tries) == (EndActionStatus.DONE, 0)
    [event] = await _end_events(db, payment.id)
    assert (event["end_action"], event["end_action_status"]) == ("leave_invoice_open", "done")
    assert "left open" in event["detail"]
    assert await _run(world, db) == {}
    assert _subscription(world, connected, payment).open


async def test_invoice_paid_before_the_job_runs_cancels_nothing(
    world: SandboxWorld, db: Database
) -> None:
    connected = await _connect(world, db, Processor.STRIPE, 83)
    payment = await _exhaust(world, db, connected)
    await _event(db, payment.id, PaidElsewhere(Actor.PROCESSOR), world.clock.now())

    assert await _run(world, db) == {"skipped": 1}

    assert (await _run_row(db, payment.id)).status is EndActionStatus.SKIPPED
    assert _subscription(world, connected, payment).cancel_requests == 0
    assert await _end_events(db, payment.id) == []


async def test_cancel_failing_every_try_ends_failed_and_says_so(
    world: SandboxWorld, db: Database
) -> None:
    connected = await _connect(world, db, Processor.STRIPE, 89)
    payment = await _exhaust(world, db, connected)
    await set_faults(world.http, connected.account_id, server_error=10_000, writes=True)
    for tries in range(1, MAX_TRIES):
        assert await _run(world, db) == {"retry": 1}
        world.clock.set(world.clock.now() + backoff(tries))

    assert await _run(world, db) == {"failed": 1}

    row = await _run_row(db, payment.id)
    assert (row.status, row.tries, row.next_attempt_at) == (EndActionStatus.FAILED, MAX_TRIES, None)
    [event] = await _end_events(db, payment.id)
    assert event["type"] == "payment.end_action_failed"
    assert "HTTP 500" in event["detail"]
    assert _subscription(world, connected, payment).open
    await set_faults(world.http, connected.account_id)


async def test_a_disconnected_connection_cancels_nothing_and_says_why(
    world: SandboxWorld, db: Database
) -> None:
    """An end action left behind by a connection disconnected since: its credentials are
    gone, so nothing is asked of the processor."""
    connected = await _connect(world, db, Processor.STRIPE, 61)
    payment = await _exhaust(world, db, connected)
    async with db.uow(SYSTEM_SCOPE) as uow:
        _, canceled = await disconnect_connection(
            uow,
            principal=system_principal(),
            connection_id=connected.connection.id,
            reason="switching processors",
            box=BOX,
            now=world.clock.now(),
        )
        await uow.commit()
    assert canceled > 0

    assert await _run(world, db) == {"not_supported": 1}

    row = await _run_row(db, payment.id)
    assert (row.status, row.detail) == (
        EndActionStatus.NOT_SUPPORTED,
        "the processor connection was disconnected",
    )
    assert _subscription(world, connected, payment).cancel_requests == 0
