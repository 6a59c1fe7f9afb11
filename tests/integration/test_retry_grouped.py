"""Attempts run concurrently in one process share their reads, mark-sent and records: each
payment ends as it would alone, in fewer transactions."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import AttemptOutcome, AttemptStatus, PaymentState, RetryStrategy
from app.processors.base import ChargeResult
from app.retry.events import ScheduleRetry
from app.retry.state_machine import transition
from app.services.retry.engine import decide
from app.services.retry.ledger import load_contexts
from app.tenancy import SYSTEM_SCOPE
from app.workflows import retry_attempt
from app.workflows.retry_attempt import AttemptResult, execute_attempt
from tests.support.factories import set_strategy
from tests.support.retry import (
    FakeStripe,
    attempts_of,
    claim,
    fixed_schedule_payments,
    reload,
    timeline,
)
from tests.support.retry import (
    decide as decide_all,
)
from tests.support.scratch import scratch_database

# A Monday 10:00 UTC: outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


class CardsOnFile(FakeStripe):
    """Charges each customer's own card on file (no two payments share a card)."""

    async def charge(self, **kw: Any) -> ChargeResult:
        self.fingerprint = f"fp_on_file_{kw['customer_ref']}"
        return await super().charge(**kw)


@pytest.fixture(scope="module")
async def db(services: Services) -> AsyncIterator[Database]:
    # Several connections at once: a database of its own, not the test's savepoint.
    async with scratch_database(services, "portal_retry_grouped", pool_size=6) as database:
        yield database


async def _claimed(
    db: Database, n: int, strategy: RetryStrategy
) -> tuple[list[tuple[uuid.UUID, int]], FixedClock]:
    """N payments claimed when the last is due; the clock stands at that time."""
    payments = await fixed_schedule_payments(db, n, T0)
    await set_strategy(db, payments[0].merchant_id, strategy)
    await decide_all(db, T0)
    due = max([(await reload(db, p.id)).next_retry_at or T0 for p in payments])
    claimed = [c for c in await claim(db, due) if c[0] in {p.id for p in payments}]
    assert len(claimed) == n
    return claimed, FixedClock(due)


def _commits(db: Database) -> list[int]:
    counted: list[int] = []
    assert db.engine is not None

    @event.listens_for(db.engine.sync_engine, "commit")
    def _commit(conn: Any) -> None:
        counted.append(1)

    return counted


async def _run_all(
    db: Database, claimed: list[tuple[uuid.UUID, int]], stripe: FakeStripe, clock: FixedClock
) -> list[AttemptResult]:
    return list(
        await asyncio.gather(
            *(
                execute_attempt(db, payment_id=p, attempt_number=n, adapters=stripe, clock=clock)
                for p, n in claimed
            )
        )
    )


async def test_concurrent_declines_are_recorded_together_each_decided_on_its_history(
    db: Database,
) -> None:
    claimed, clock = await _claimed(db, 6, RetryStrategy.DECLINE_AWARE)
    stripe = CardsOnFile(now=clock.now(), approve=False)
    commits = _commits(db)
    results = await _run_all(db, claimed, stripe, clock)
    assert [r.status for r in results] == [AttemptStatus.RECORDED] * 6
    assert stripe.charge_count == 6
    # Grouped: fewer record transactions than attempts (the first runs alone, the rest join).
    assert len(commits) < 6
    ids = [p for p, _ in claimed]
    async with db.session(SYSTEM_SCOPE) as session:
        contexts = await load_contexts(session, ids, now=clock.now())
    for pid, number in claimed:
        payment = await reload(db, pid)
        assert payment.state is PaymentState.SCHEDULED
        [attempt] = [a for a in await attempts_of(db, pid) if a.portal_number == number]
        assert attempt.outcome is AttemptOutcome.DECLINED
        assert attempt.processor_attempt_id is not None
        assert attempt.raw_record_id is not None
        assert attempt.card_id is not None
        # The retry time the payment gets from its stored history, as if it were alone.
        ctx = contexts[pid]
        decided = decide(ctx, now=clock.now()).to_event()
        tr = transition(
            PaymentState.SCHEDULED, decided, policy=ctx.policy, ledger=ctx.ledger, now=clock.now()
        )
        [schedule] = [a for a in tr.actions if isinstance(a, ScheduleRetry)]
        assert payment.next_retry_at == schedule.at
        events = [t.event for t in await timeline(db, pid)]
        assert events[-2:] == ["attempt_declined", "decision_made"]


async def test_concurrent_approvals_recover_each_payment_once(db: Database) -> None:
    claimed, clock = await _claimed(db, 5, RetryStrategy.FIXED_SCHEDULE)
    stripe = CardsOnFile(now=clock.now(), approve=True)
    results = await _run_all(db, claimed, stripe, clock)
    assert [r.status for r in results] == [AttemptStatus.RECORDED] * 5
    # Run again (a duplicate job of each): nothing more is charged or recorded.
    again = await _run_all(db, claimed, stripe, clock)
    assert [r.status for r in again] == [AttemptStatus.SKIPPED] * 5
    assert stripe.charge_count == 5
    for pid, _ in claimed:
        assert (await reload(db, pid)).state is PaymentState.RECOVERED
        succeeded = [a for a in await attempts_of(db, pid) if a.outcome is AttemptOutcome.SUCCEEDED]
        assert len(succeeded) == 1


async def test_a_group_that_cannot_be_recorded_together_is_recorded_one_by_one(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed, clock = await _claimed(db, 4, RetryStrategy.FIXED_SCHEDULE)
    stripe = CardsOnFile(now=clock.now(), approve=False)
    together: list[int] = []

    async def broken(uow: Any, answers: Any, now: datetime) -> Any:
        together.append(len(answers))
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(retry_attempt, "_record_together", broken)
    results = await _run_all(db, claimed, stripe, clock)
    assert together  # a group was tried together, and failed
    assert [r.status for r in results] == [AttemptStatus.RECORDED] * 4
    for pid, _ in claimed:
        assert (await reload(db, pid)).state is PaymentState.SCHEDULED
