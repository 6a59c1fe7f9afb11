"""Retry engine services against the database: decide, claim, charge, record, reconcile."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, func, select

from app.clock import FixedClock
from app.db import Database
from app.enums import Actor, AttemptOutcome, MerchantStatus, PaymentState, RetryStrategy
from app.models.customer import Customer
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.retry import OutboxEvent
from app.processors.base import ChargeResult, PermanentProcessorError, TransientProcessorError
from app.retry.events import DecisionMade
from app.retry.schedule import in_control_group
from app.retry.state_machine import attempt_idempotency_key
from app.services.retry.engine import decide_pending, run_event
from app.services.retry.ledger import load_contexts
from app.tenancy import SYSTEM_SCOPE
from app.workflows.retry_attempt import execute_attempt, reconcile_stuck
from tests.support.factories import make_merchant, set_strategy
from tests.support.retry import (
    FakeStripe,
    WorkerKilled,
    attempts_of,
    claim,
    decide,
    fixed_schedule_payments,
    ingest,
    make_connection,
    outbox,
    reload,
    stripe_charge,
    timeline,
)
from tests.support.statements import count_statements

# A Monday 10:00 UTC: outside the default quiet hours (22-7) whatever happens below.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


async def _setup(db: Database, charges: int = 1, **kw: Any) -> tuple[list[Payment], FixedClock]:
    return await fixed_schedule_payments(db, charges, T0, **kw), FixedClock(T0)


async def test_new_failure_is_decided_on_the_fixed_schedule(db: Database) -> None:
    [payment], _ = await _setup(db)
    assert payment.state is PaymentState.PENDING
    assert await decide(db, T0) >= 1
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    # The default policy's first fixed day: one day after the first failure.
    assert after.next_retry_at == T0 + timedelta(days=1)
    assert after.decision_at == T0
    assert after.decision_strategy is not None
    assert after.decision_reason
    assert "day 1" in after.decision_reason
    assert not after.needs_decision
    steps = [(t.from_state, t.to_state, t.event) for t in await timeline(db, payment.id)]
    assert steps == [
        (PaymentState.PENDING, PaymentState.PENDING, "failure_ingested"),
        (PaymentState.PENDING, PaymentState.SCHEDULED, "decision_made"),
    ]
    assert await outbox(db, payment.id) == ["payment.scheduled"]
    # Deciding again finds nothing to do.
    await decide(db, T0)
    assert len(await timeline(db, payment.id)) == 2


async def test_hard_decline_ends_not_retryable_with_the_rule(db: Database) -> None:
    [payment], _ = await _setup(db, reason="stolen_card")
    await decide(db, T0)
    after = await reload(db, payment.id)
    assert after.state is PaymentState.NOT_RETRYABLE
    assert after.next_retry_at is None
    assert after.blocking_rule == "decline_advice_never"
    assert await outbox(db, payment.id) == ["payment.not_retryable"]


async def test_the_stored_blocking_rule_is_the_one_the_core_names(db: Database) -> None:
    """A rule that moves a retry is stored; a decision's reason is never read for one."""
    [payment], _ = await _setup(db)
    await decide(db, T0)

    async def decide_at(at: datetime, reason: str) -> Payment:
        async with db.uow(SYSTEM_SCOPE) as uow:
            ctx = (await load_contexts(uow.session, [payment.id], now=T0))[payment.id]
            decision = DecisionMade(at, reason, RetryStrategy.FIXED_SCHEDULE)
            await run_event(uow, ctx, decision, now=T0)
            await uow.commit()
        return await reload(db, payment.id)

    moved = await decide_at(T0 + timedelta(hours=1), "retry requested by support")
    assert (moved.next_retry_at, moved.blocking_rule) == (T0 + timedelta(days=1), "min_spacing")
    kept = await decide_at(T0 + timedelta(days=2), "retry requested by support")
    assert (kept.next_retry_at, kept.blocking_rule) == (T0 + timedelta(days=2), None)


async def test_visa_category_1_on_another_expiry_of_the_card_blocks_the_retry(
    db: Database,
) -> None:
    merchant = await make_merchant(db, "Never", now=T0)
    connection = await make_connection(db, merchant, T0)
    old = stripe_charge(
        "ch_old",
        created=T0 - timedelta(days=40),
        reason="do_not_honor",
        exp=(1, 2026),
        network_decline_code="04",
    )
    new = stripe_charge("ch_new", created=T0, exp=(1, 2030))
    payments = await ingest(db, connection, [old, new], T0)
    assert len(payments) == 2
    await decide(db, T0)
    after = await reload(db, payments[1].id)
    assert after.state is PaymentState.NOT_RETRYABLE
    assert after.blocking_rule == "visa_category_1"


async def test_claim_takes_due_payments_only_and_writes_the_attempt_first(db: Database) -> None:
    payments, _ = await _setup(db, charges=2)
    await decide(db, T0)
    assert await claim(db, T0 + timedelta(hours=23)) == []
    due = T0 + timedelta(days=1)
    claimed = await claim(db, due)
    assert sorted(claimed) == sorted((p.id, 1) for p in payments)
    assert await claim(db, due) == []  # claimed once only
    for payment in payments:
        after = await reload(db, payment.id)
        assert after.state is PaymentState.RETRYING
        assert after.next_retry_at is None
        assert after.retrying_since == due
        flying = [a for a in await attempts_of(db, payment.id) if a.actor is Actor.PORTAL]
        assert [(a.portal_number, a.outcome, a.sent_at) for a in flying] == [
            (1, AttemptOutcome.IN_FLIGHT, None)
        ]
        assert flying[0].idempotency_key == attempt_idempotency_key(str(payment.id), 1)


async def test_customer_hourly_cap_holds_within_one_claim(db: Database) -> None:
    merchant = await make_merchant(db, "Cap", now=T0)
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, T0)
    bodies = [
        stripe_charge(f"ch_cap_{i}", created=T0, customer="cus_same", fingerprint=f"fp_cap_{i}")
        for i in range(7)
    ]
    await ingest(db, connection, bodies, T0)
    await decide(db, T0)
    claimed = await claim(db, T0 + timedelta(days=1))
    assert len(claimed) == 5  # at most 5 attempts an hour per customer
    async with db.session(SYSTEM_SCOPE) as s:
        moved = await s.scalar(
            select(func.count())
            .select_from(Payment)
            .where(
                col(Payment.merchant_id) == merchant.id,
                col(Payment.state) == PaymentState.SCHEDULED,
                col(Payment.next_retry_at) > T0 + timedelta(days=1),
            )
        )
    assert moved == 2


async def test_approved_charge_recovers_the_payment(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now())
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "recorded"
    after = await reload(db, payment.id)
    assert after.state is PaymentState.RECOVERED
    assert after.recovered_by is Actor.PORTAL
    [_, attempt] = await attempts_of(db, payment.id)
    assert attempt.outcome is AttemptOutcome.SUCCEEDED
    assert attempt.processor_attempt_id == "ch_retry_1"
    assert attempt.sent_at is not None
    assert attempt.raw_record_id is not None
    # Pre-flight asked about the payment's invoice and customer, not the original charge.
    assert stripe.fetches == []
    assert [(r.invoice_ref, r.customer_ref) for r in stripe.preflights] == [
        (payment.invoice_ref, f"cus_{payment.processor_payment_id[3:]}")
    ]
    assert await outbox(db, payment.id) == [
        "payment.scheduled",
        "payment.retrying",
        "payment.recovered",
    ]
    # Running the job again (at-least-once delivery) changes nothing and charges nothing.
    again = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert again.status == "skipped"
    assert stripe.requests == [attempt_idempotency_key(str(payment.id), 1)]


async def test_declined_charge_is_rescheduled_on_the_next_fixed_day(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), approve=False)
    await execute_attempt(db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock)
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    assert after.next_retry_at == T0 + timedelta(days=3)
    [_, attempt] = await attempts_of(db, payment.id)
    assert attempt.outcome is AttemptOutcome.DECLINED
    assert attempt.decline_category == "insufficient_funds"
    assert attempt.decline_retryable is True
    # The next claim makes attempt 2, with its own key.
    clock.set(T0 + timedelta(days=3))
    assert await claim(db, clock.now()) == [(payment.id, 2)]


async def test_paid_elsewhere_found_in_pre_flight_means_no_charge(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), paid={payment.processor_payment_id})
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "prevented"
    assert stripe.requests == []
    after = await reload(db, payment.id)
    assert after.state is PaymentState.RECOVERED
    assert after.recovered_by is Actor.PROCESSOR
    assert [a.actor for a in await attempts_of(db, payment.id)] == [Actor.BILLING_SYSTEM]


async def test_processor_without_fetch_proceeds(db: Database) -> None:
    _, clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), can_fetch=False)
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "recorded"
    assert stripe.charge_count == 1


async def test_worker_killed_after_charge_is_reconciled_with_one_charge(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), kill_after_charge=True)
    with pytest.raises(WorkerKilled):
        await execute_attempt(
            db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
        )
    stuck = await reload(db, payment.id)
    assert stuck.state is PaymentState.RETRYING
    [_, flying] = await attempts_of(db, payment.id)
    assert flying.outcome is AttemptOutcome.IN_FLIGHT
    assert flying.sent_at is not None
    # Not yet stuck long enough: the sweep leaves it alone.
    assert await reconcile_stuck(db, adapters=stripe, clock=clock) == []
    clock.set(clock.now() + timedelta(minutes=11))
    [result] = await reconcile_stuck(db, adapters=stripe, clock=clock)
    assert result.status == "recorded"
    assert stripe.charge_count == 1
    assert len(stripe.requests) == 2  # the same key, sent twice, charged once
    assert len(set(stripe.requests)) == 1
    after = await reload(db, payment.id)
    assert after.state is PaymentState.RECOVERED


async def test_timeouts_while_charging_are_retried_with_the_same_key(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), timeout_after_charge=2)
    statuses = []
    for _ in range(3):
        result = await execute_attempt(
            db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
        )
        statuses.append(result.status)
    assert statuses == ["pending", "pending", "recorded"]
    assert stripe.charge_count == 1
    assert (await reload(db, payment.id)).state is PaymentState.RECOVERED


async def test_unsent_attempt_of_a_payment_recovered_meanwhile_is_dropped(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    # The invoice was paid and ingested before the attempt job ran.
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = await uow.session.get(Payment, pid)
        assert row is not None
        row.state = PaymentState.RECOVERED
        row.recovered_by = Actor.CUSTOMER
        await uow.commit()
    stripe = FakeStripe(clock.now())
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "abandoned"
    assert stripe.requests == []
    assert [a.actor for a in await attempts_of(db, payment.id)] == [Actor.BILLING_SYSTEM]


async def test_ledger_loads_in_three_queries_whatever_the_batch(
    connection: AsyncConnection, db: Database
) -> None:
    payments, _ = await _setup(db, charges=6)
    async with db.session(SYSTEM_SCOPE) as s:
        await s.connection()  # the session's own start is not counted
        with count_statements(connection) as statements:
            contexts = await load_contexts(s, [p.id for p in payments], now=T0)
    assert len(contexts) == 6
    assert len(statements) == 3
    ledger = contexts[payments[0].id].ledger
    assert ledger.network == "visa"
    assert len(ledger.card_history) == 1  # the first failure
    assert ledger.retries == ()


async def test_outbox_rows_commit_with_the_state(db: Database) -> None:
    [payment], _ = await _setup(db)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await decide_pending(uow, now=T0)
        # Rolled back: neither the state nor its event exists.
    assert (await reload(db, payment.id)).state is PaymentState.PENDING
    async with db.session(SYSTEM_SCOPE) as s:
        n = await s.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(col(OutboxEvent.payment_id) == payment.id)
        )
    assert n == 0


async def test_paused_merchant_holds_payments_and_resume_decides_them(db: Database) -> None:
    [payment], _ = await _setup(db)
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchant = await uow.session.get(Merchant, payment.merchant_id)
        assert merchant is not None
        merchant.status = MerchantStatus.PAUSED
        await uow.commit()
    await decide(db, T0)
    held = await reload(db, payment.id)
    assert held.state is PaymentState.PENDING
    assert held.next_retry_at is None
    await decide(db, T0 + timedelta(minutes=1))
    assert len(await timeline(db, payment.id)) == 1  # held quietly, not re-decided each tick
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchant = await uow.session.get(Merchant, payment.merchant_id)
        assert merchant is not None
        merchant.status = MerchantStatus.ACTIVE
        await uow.commit()
    await decide(db, T0 + timedelta(hours=1))
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    assert after.next_retry_at == T0 + timedelta(days=1)
    assert [t.event for t in await timeline(db, payment.id)][-2:] == [
        "merchant_resumed",
        "decision_made",
    ]


@pytest.mark.parametrize(
    ("refusal", "connection_status"),
    [
        (PermanentProcessorError("stripe: HTTP 400: No such charge", status=400), "active"),
        (PermanentProcessorError("stripe: HTTP 401, check credentials", status=401), "error"),
    ],
)
async def test_refused_charge_is_abandoned_and_retried_an_hour_later(
    db: Database, refusal: PermanentProcessorError, connection_status: str
) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), refuse=refusal)
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "abandoned"
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    assert after.next_retry_at == clock.now() + timedelta(hours=1)
    assert [a.actor for a in await attempts_of(db, payment.id)] == [Actor.BILLING_SYSTEM]
    async with db.session(SYSTEM_SCOPE) as s:
        connection = await s.get(ProcessorConnection, after.connection_id)
    assert connection is not None
    assert connection.status == connection_status


async def test_key_conflict_is_not_a_refusal(db: Database) -> None:
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    conflict = PermanentProcessorError("stripe: HTTP 409: idempotency key in use", status=409)
    stripe = FakeStripe(clock.now(), refuse=conflict)
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "pending"
    assert (await reload(db, payment.id)).state is PaymentState.RETRYING
    stripe.refuse = None
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "recorded"
    assert stripe.charge_count == 1


@dataclass
class UnreachableOnce(FakeStripe):
    """The first charge request never reaches the processor (the connection is refused after
    "sent" was committed): the processor never sees its key."""

    unreachable: bool = True

    async def charge(self, **kwargs: Any) -> ChargeResult:
        if self.unreachable:
            self.unreachable = False
            raise TransientProcessorError("stripe: connection refused")
        return await super().charge(**kwargs)


async def test_attempt_in_flight_on_a_payment_recovered_meanwhile_is_never_replayed(
    db: Database,
) -> None:
    """A sent attempt whose charge never reached the processor, its job then lost, while the
    customer pays the invoice elsewhere: replaying the key would make a new charge on a paid
    invoice (the processor never saw the key), so the sweep leaves the attempt alone."""
    [payment], clock = await _setup(db, invoice="in_paid_elsewhere")
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = UnreachableOnce(clock.now())
    first = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert first.status == "pending"
    async with db.session(SYSTEM_SCOPE) as session:
        connection = await session.get_one(ProcessorConnection, payment.connection_id)
        customer = await session.get_one(Customer, payment.customer_id)
    paid = stripe_charge(
        "ch_paid_elsewhere",
        created=clock.now(),
        status="succeeded",
        invoice="in_paid_elsewhere",
        customer=customer.external_ref,
    )
    await ingest(db, connection, [paid], clock.now())
    assert (await reload(db, payment.id)).state is PaymentState.RECOVERED

    clock.set(clock.now() + timedelta(minutes=11))
    assert await reconcile_stuck(db, adapters=stripe, clock=clock) == []
    assert stripe.charge_count == 0
    # Nor does its job, delivered again (a worker's in-progress hold ending): no request.
    requests = list(stripe.requests)
    again = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert again.status == "skipped"
    assert stripe.requests == requests
    assert stripe.charge_count == 0


async def _connection_and_customer(
    db: Database, payment: Payment
) -> tuple[ProcessorConnection, Customer]:
    async with db.session(SYSTEM_SCOPE) as session:
        connection = await session.get_one(ProcessorConnection, payment.connection_id)
        customer = await session.get_one(Customer, payment.customer_id)
    return connection, customer


async def test_a_killed_attempt_whose_charge_was_read_back_first_is_settled_by_its_key(
    db: Database,
) -> None:
    """The worker dies between the charge and its record (its job is held by the dead worker),
    and ingestion reads the portal's own charge back first: the payment is recovered by it and
    leaves RETRYING. The sweep must still settle the attempt: the processor has seen its key,
    so replaying it answers with that charge, which becomes the attempt's; nothing is charged
    twice and nothing stays in flight."""
    [payment], clock = await _setup(db, invoice="in_read_back")
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), kill_after_charge=True)
    with pytest.raises(WorkerKilled):
        await execute_attempt(
            db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
        )
    [made] = stripe.charges.values()
    connection, customer = await _connection_and_customer(db, payment)
    read_back = stripe_charge(
        made.processor_payment_id,
        created=clock.now(),
        status="succeeded",
        invoice="in_read_back",
        customer=customer.external_ref,
        metadata={"retry_of": payment.processor_payment_id},
    )
    await ingest(db, connection, [read_back], clock.now())
    recovered = await reload(db, payment.id)
    assert recovered.state is PaymentState.RECOVERED
    assert recovered.recovered_by is Actor.PORTAL
    [_, flying, echo] = await attempts_of(db, payment.id)
    assert flying.outcome is AttemptOutcome.IN_FLIGHT
    assert flying.sent_at is not None
    assert (echo.actor, echo.portal_number) == (Actor.PORTAL, None)

    # Not yet stuck long enough: the sweep leaves it alone.
    assert await reconcile_stuck(db, adapters=stripe, clock=clock) == []
    clock.set(clock.now() + timedelta(minutes=11))
    [result] = await reconcile_stuck(db, adapters=stripe, clock=clock)
    assert result.status == "recorded"
    key = attempt_idempotency_key(str(pid), number)
    assert stripe.requests == [key, key]  # the same key, sent twice, charged once
    assert stripe.charge_count == 1
    [_, recorded] = await attempts_of(db, payment.id)
    assert recorded.portal_number == number
    assert recorded.outcome is AttemptOutcome.SUCCEEDED
    assert recorded.processor_attempt_id == made.processor_payment_id
    after = await reload(db, payment.id)
    assert (after.state, after.recovered_by) == (PaymentState.RECOVERED, Actor.PORTAL)
    assert await reconcile_stuck(db, adapters=stripe, clock=clock) == []


async def test_an_unsent_attempt_whose_job_was_lost_is_dropped_once_the_payment_moved_on(
    db: Database,
) -> None:
    """A claimed attempt whose job was lost before it ran (a Redis restart) while the customer
    paid the invoice: nothing was sent, so the sweep drops the attempt without a request."""
    [payment], clock = await _setup(db, invoice="in_paid_first")
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(_, number)] = await claim(db, clock.now())
    connection, customer = await _connection_and_customer(db, payment)
    paid = stripe_charge(
        "ch_paid_first",
        created=clock.now(),
        status="succeeded",
        invoice="in_paid_first",
        customer=customer.external_ref,
        secure=True,
    )
    await ingest(db, connection, [paid], clock.now())
    assert (await reload(db, payment.id)).state is PaymentState.RECOVERED
    [_, flying, _] = await attempts_of(db, payment.id)
    assert (flying.portal_number, flying.outcome) == (number, AttemptOutcome.IN_FLIGHT)

    clock.set(clock.now() + timedelta(minutes=11))
    stripe = FakeStripe(clock.now())
    [result] = await reconcile_stuck(db, adapters=stripe, clock=clock)
    assert result.status == "abandoned"
    assert stripe.requests == []
    assert stripe.preflights == []
    left = await attempts_of(db, payment.id)
    assert [a.actor for a in left] == [Actor.BILLING_SYSTEM, Actor.CUSTOMER]
    after = await reload(db, payment.id)
    assert (after.state, after.recovered_by) == (PaymentState.RECOVERED, Actor.CUSTOMER)


async def test_decline_aware_policy_schedules_by_the_decline_and_again_after_a_decline(
    db: Database,
) -> None:
    [payment], clock = await _setup(db, reason="processing_error")
    await set_strategy(
        db, payment.merchant_id, RetryStrategy.DECLINE_AWARE, min_hours_between_attempts=1
    )
    await decide(db, T0)
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    assert after.decision_strategy is RetryStrategy.DECLINE_AWARE
    assert after.next_retry_at == T0 + timedelta(hours=2)
    # The customer's card says only its issuer's country (the US, of several clocks): the
    # policy's zone applies, and the reason says so.
    assert after.decision_reason == (
        "decline-aware rules: processing_error, 2 hours after the first failure; "
        "local time: UTC (the policy's time zone: the customer has none)"
    )
    # A declined retry asks the rules again: the next time is theirs, not a fixed day.
    clock.set(T0 + timedelta(hours=2))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), approve=False)
    await execute_attempt(db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock)
    await decide(db, clock.now())
    again = await reload(db, payment.id)
    assert again.state is PaymentState.SCHEDULED
    assert again.decision_strategy is RetryStrategy.DECLINE_AWARE
    assert again.decision_reason is not None
    assert again.decision_reason.startswith("decline-aware rules: ")
    assert again.next_retry_at is not None
    assert again.next_retry_at > clock.now()


async def test_model_policy_without_a_model_is_scheduled_by_the_decline_aware_rules(
    db: Database,
) -> None:
    payments, _ = await _setup(db, charges=12)
    await set_strategy(db, payments[0].merchant_id, RetryStrategy.MODEL)
    await decide(db, T0)
    arms = set()
    for payment in payments:
        after = await reload(db, payment.id)
        assert after.state is PaymentState.SCHEDULED
        assert after.next_retry_at is not None
        control = in_control_group(str(after.merchant_id), str(after.id))
        arms.add(control)
        if control:
            assert after.decision_strategy is RetryStrategy.FIXED_SCHEDULE
        else:
            assert after.decision_strategy is RetryStrategy.DECLINE_AWARE
            assert after.decision_reason is not None
            assert "(no champion model: decline-aware rules); local time: " in (
                after.decision_reason
            )
    assert False in arms


async def test_a_model_policy_without_a_control_group_keeps_no_payment_on_the_fixed_schedule(
    db: Database,
) -> None:
    payments, _ = await _setup(db, charges=12)
    merchant_id = payments[0].merchant_id
    await set_strategy(db, merchant_id, RetryStrategy.MODEL, control_group_percent=0)
    await decide(db, T0)
    strategies = {(await reload(db, p.id)).decision_strategy for p in payments}
    assert strategies == {RetryStrategy.DECLINE_AWARE}


async def test_a_decline_answered_after_the_payment_moved_on_is_recorded_not_refused(
    db: Database,
) -> None:
    """A charge sent while RETRYING whose decline arrives once the payment is SCHEDULED again:
    the attempt is recorded with its decline and the payment decided again with it, instead of
    the attempt staying in flight forever behind an illegal transition."""
    [payment], clock = await _setup(db)
    await decide(db, T0)
    clock.set(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    [_, sent] = await attempts_of(db, pid)
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = await uow.session.get(Payment, pid)
        assert row is not None
        attempt = await uow.session.get(type(sent), sent.id)
        assert attempt is not None
        attempt.sent_at = clock.now()
        row.state = PaymentState.SCHEDULED
        row.next_retry_at = clock.now() + timedelta(days=2)
        await uow.commit()
    stripe = FakeStripe(clock.now(), approve=False)
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "recorded"
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    [_, recorded] = await attempts_of(db, payment.id)
    assert recorded.outcome is AttemptOutcome.DECLINED
    assert recorded.decline_category == "insufficient_funds"
    reasons = [t.reason for t in await timeline(db, payment.id)]
    assert reasons[-2:] == [
        "portal retried and was declined (insufficient_funds)",
        "fixed schedule: day 3 after the first failure",
    ]
