"""The retry engine in batches: decisions, claims and recorded charges written set-based, with
what each payment gets (timeline, outbox, network limits) the same as one by one."""

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database, ScopedSession
from app.enums import PaymentState, RetryStrategy
from app.models.payment import Payment
from app.models.retry import OutboxEvent
from app.services.retry.engine import claim_due, decide_pending
from app.services.stats.recompute import rollup_differences
from app.tenancy import SYSTEM_SCOPE
from app.workflows.retry_attempt import execute_attempt
from tests.support.factories import make_merchant, set_strategy
from tests.support.retry import (
    FakeStripe,
    attempts_of,
    claim,
    decide,
    fingerprint_of,
    fixed_schedule_payments,
    ingest,
    make_connection,
    outbox,
    reload,
    timeline,
    varied_charges,
)
from tests.support.statements import count_statements, without_savepoints

# A Monday 10:00 UTC: outside the default quiet hours (22-7) whatever happens below.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


async def _payments(db: Database, n: int, *, customer: str | None = None) -> list[Payment]:
    return await fixed_schedule_payments(db, n, T0, customer=customer)


async def _decide_counted(connection: AsyncConnection, db: Database) -> tuple[int, int]:
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.connection()  # the session's own start is not counted
        with count_statements(connection) as sent:
            done = await decide_pending(uow, now=T0)
        await uow.commit()
    return done, len(without_savepoints(sent))


async def test_a_decide_batch_costs_the_same_statements_whatever_its_size(
    connection: AsyncConnection, db: Database
) -> None:
    [one] = await _payments(db, 1)
    decided, alone = await _decide_counted(connection, db)
    assert decided == 1
    many = await _payments(db, 12)
    decided, batch = await _decide_counted(connection, db)
    assert decided == 12
    assert batch == alone, (alone, batch)
    for payment in [one, *many]:
        after = await reload(db, payment.id)
        assert after.state is PaymentState.SCHEDULED
        assert after.next_retry_at == T0 + timedelta(days=1)
        assert after.decision_reason is not None
        assert not after.needs_decision
        steps = await timeline(db, payment.id)
        assert [(t.event, t.seq) for t in steps] == [("failure_ingested", 0), ("decision_made", 1)]
        assert await outbox(db, payment.id) == ["payment.scheduled"]
    # The recovery rollups (statement-level triggers) saw the batch's one UPDATE whole.
    await _rollups_agree(db, [one, *many])


async def _rollups_agree(db: Database, payments: list[Payment]) -> None:
    async with db.session(SYSTEM_SCOPE) as session:
        assert await rollup_differences(session, sorted({p.merchant_id for p in payments})) == []


async def test_one_claim_batch_keeps_the_customer_cap(db: Database) -> None:
    """Eight payments of one customer due together: the batch starts five (the hourly cap)
    and moves the others past the hour, exactly as claims one by one would."""
    payments = await _payments(db, 8, customer=f"cus_{uuid.uuid4().hex[:8]}")
    await decide(db, T0)
    now = T0 + timedelta(days=1)
    started = await claim(db, now)
    assert len(started) == 5
    states = [await reload(db, p.id) for p in payments]
    retrying = [p for p in states if p.state is PaymentState.RETRYING]
    held = [p for p in states if p.state is PaymentState.SCHEDULED]
    assert len(retrying) == 5
    assert len(held) == 3
    for payment in held:
        assert payment.next_retry_at is not None
        assert payment.next_retry_at >= now + timedelta(hours=1)
        assert payment.blocking_rule == "customer_attempts_hourly"
    for payment in retrying:
        [*_, attempt] = await attempts_of(db, payment.id)
        assert attempt.portal_number == 1
        assert attempt.sent_at is None
        assert await outbox(db, payment.id) == ["payment.scheduled", "payment.retrying"]
    # A second claim in the same hour starts nothing more for this customer.
    assert await claim(db, now + timedelta(minutes=5)) == []


async def test_an_approved_attempt_costs_two_commits_and_at_most_six_statements(
    connection: AsyncConnection, db: Database
) -> None:
    [payment] = await _payments(db, 1)
    await decide(db, T0)
    clock = FixedClock(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(clock.now(), fingerprint=await fingerprint_of(db, payment.card_id))
    commits: list[object] = []

    def on_commit(session: object) -> None:
        commits.append(session)

    event.listen(ScopedSession, "after_commit", on_commit)
    try:
        with count_statements(connection) as sent:
            result = await execute_attempt(
                db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
            )
    finally:
        event.remove(ScopedSession, "after_commit", on_commit)
    statements = without_savepoints(sent)
    assert result.status == "recorded"
    assert len(commits) == 2
    # Read, mark sent; lock, raw answer, one write (attempt, payment, timeline, outbox).
    assert len(statements) <= 6, statements
    after = await reload(db, payment.id)
    assert after.state is PaymentState.RECOVERED
    assert after.recovered_at == clock.now()
    [*_, attempt] = await attempts_of(db, payment.id)
    assert attempt.outcome == "succeeded"
    assert attempt.raw_record_id is not None
    assert attempt.card_id == payment.card_id
    steps = await timeline(db, payment.id)
    assert [t.event for t in steps][-1] == "attempt_succeeded"
    assert [t.seq for t in steps] == list(range(len(steps)))
    assert (await outbox(db, payment.id))[-1] == "payment.recovered"
    await _rollups_agree(db, [payment])


async def test_a_declined_attempt_is_recorded_and_decided_again(db: Database) -> None:
    [payment] = await _payments(db, 1)
    await decide(db, T0)
    clock = FixedClock(T0 + timedelta(days=1))
    [(pid, number)] = await claim(db, clock.now())
    stripe = FakeStripe(
        clock.now(), approve=False, fingerprint=await fingerprint_of(db, payment.card_id)
    )
    result = await execute_attempt(
        db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
    )
    assert result.status == "recorded"
    after = await reload(db, payment.id)
    assert after.state is PaymentState.SCHEDULED
    # The fixed schedule's next day after the first failure.
    assert after.next_retry_at == T0 + timedelta(days=3)
    [*_, attempt] = await attempts_of(db, payment.id)
    assert attempt.outcome == "declined"
    assert attempt.decline_category is not None
    steps = await timeline(db, payment.id)
    assert [t.seq for t in steps] == list(range(len(steps)))
    assert await outbox(db, payment.id) == [
        "payment.scheduled",
        "payment.retrying",
        "payment.scheduled",
    ]


async def test_claims_in_batches_share_the_due_set_without_overlap(db: Database) -> None:
    payments = await _payments(db, 9)
    await decide(db, T0)
    now = T0 + timedelta(days=1)
    claimed: list[uuid.UUID] = []
    while True:
        async with db.uow(SYSTEM_SCOPE) as uow:
            applied = await claim_due(uow, now=now, limit=4)
            await uow.commit()
        if not applied.transitions:
            break
        claimed += [pid for pid, _ in applied.enqueue]
    assert sorted(claimed) == sorted(p.id for p in payments)
    for payment in payments:
        assert len([a for a in await attempts_of(db, payment.id) if a.portal_number]) == 1
    await _rollups_agree(db, payments)


async def _varied_merchant(db: Database, prefix: str, count: int) -> list[Payment]:
    """`count` failed payments of a new decline-aware merchant, each on its own card and
    customer, varied in decline, brand, amount and currency (in the order charged)."""
    merchant = await make_merchant(db, f"Batch {prefix}", now=T0)
    await set_strategy(db, merchant.id, RetryStrategy.DECLINE_AWARE)
    connection = await make_connection(db, merchant, T0)
    charges = varied_charges(
        prefix,
        count,
        created=T0,
        customers=count,
        fingerprints=count,
        amount=300,
        step=977,
        currencies=("usd", "eur", "jpy"),
    )
    payments = await ingest(db, connection, charges, T0)
    by_charge = {p.processor_payment_id: p for p in payments}
    return [by_charge[c["id"]] for c in charges]


# What a payment's outbox event says of it besides its identity.
_IDENTITY = ("payment_id", "processor_payment_id", "invoice_ref")


async def _outcome(db: Database, payment: Payment) -> tuple[object, ...]:
    """Everything deciding and claiming wrote for one payment, its identity left out."""
    after = await reload(db, payment.id)
    steps = [
        (t.seq, t.from_state, t.to_state, t.event, t.reason, t.actor, t.at)
        for t in await timeline(db, payment.id)
    ]
    attempts = [
        (a.number, a.portal_number, a.outcome, a.actor, a.attempted_at, a.sent_at)
        for a in await attempts_of(db, payment.id)
    ]
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(col(OutboxEvent.event_type), col(OutboxEvent.payload))
            .where(col(OutboxEvent.payment_id) == payment.id)
            .order_by(col(OutboxEvent.created_at), col(OutboxEvent.event_type))
        )
        events = [
            (name, {k: v for k, v in payload.items() if k not in _IDENTITY})
            for name, payload in rows.all()
        ]
    return (
        after.state,
        after.next_retry_at,
        after.decision_at,
        after.decision_reason,
        after.decision_strategy,
        after.blocking_rule,
        after.policy_version,
        after.needs_decision,
        after.attempt_count,
        after.retrying_since,
        steps,
        attempts,
        events,
    )


async def _run(db: Database, *, limit: int, until: datetime) -> None:
    """Decide, then claim at `until`, `limit` payments per unit of work, until none is left."""
    while True:
        async with db.uow(SYSTEM_SCOPE) as uow:
            done = await decide_pending(uow, now=T0, limit=limit)
            await uow.commit()
        if not done:
            break
    while True:
        async with db.uow(SYSTEM_SCOPE) as uow:
            applied = await claim_due(uow, now=until, limit=limit)
            await uow.commit()
        if not applied.transitions:
            break


async def test_a_batch_decides_and_claims_as_one_payment_at_a_time(db: Database) -> None:
    """The same failures decided and claimed in one batch of each, and one payment per unit
    of work: every payment ends with the same columns, timeline, attempts and events."""
    count = 24
    # The Friday after: past the first payday (09:00) and the soft declines' first hours.
    until = T0 + timedelta(days=4)
    alone = await _varied_merchant(db, f"ch_alone_{uuid.uuid4().hex[:6]}", count)
    await _run(db, limit=1, until=until)
    together = await _varied_merchant(db, f"ch_together_{uuid.uuid4().hex[:6]}", count)
    await _run(db, limit=500, until=until)
    one_by_one = [await _outcome(db, p) for p in alone]
    batched = [await _outcome(db, p) for p in together]
    assert batched == one_by_one
    # The set held every way a decision and a claim go: scheduled and then started, moved by
    # a rule, ended by the decline.
    states = {outcome[0] for outcome in batched}
    assert PaymentState.RETRYING in states
    assert PaymentState.NOT_RETRYABLE in states
    await _rollups_agree(db, [*alone, *together])
