"""Two real transactions on one payment: the second, whose locking read waited for (or raced
with) the first, still puts its timeline rows after the first one's. And the decide cron's
lanes, transactions at once over payments of their own.

Under READ COMMITTED a `SELECT … FOR UPDATE` reads everything as of its statement's start:
once the lock is granted it returns the payment row as now committed, but whatever else the
same statement read (the payment's latest timeline position among it) stays as it was before
the other transaction committed. Each test holds one transaction open on the payment, starts
the other, and commits the first at the moment the second's statement has begun.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from arq.connections import RedisSettings, create_pool
from arq.constants import job_key_prefix
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.clock import FixedClock
from app.db import Database, UnitOfWork
from app.embedded import Services
from app.enums import MerchantStatus, PaymentState
from app.models.merchant import Merchant
from app.services.merchant import set_recovery_status
from app.services.retry.engine import claim_due, decide_pending
from app.services.retry.manual import cancel_recovery, retry_now
from app.services.retry_policy import PolicyChanges, current_policies, update_retry_policy
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows import retry_attempt
from jobs import retry as jobs_retry
from jobs.enqueue import attempt_job_id, enqueue_attempt
from tests.support.retry import decide, fixed_schedule_payments, reload, timeline
from tests.support.scratch import scratch_database

# A Monday 10:00 UTC: outside the default quiet hours whatever happens below.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
DAY1 = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
async def db(services: Services) -> AsyncIterator[Database]:
    # Committed data and concurrent transactions: a database of its own.
    async with scratch_database(services, "portal_retry_locking") as database:
        yield database


async def _backend(uow: UnitOfWork) -> int:
    pid: int = (await uow.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


# The backend `:pid` waits for a lock.
_WAITING_FOR_LOCK = "SELECT 1 FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'"
# The backend `:pid` runs the claim's or the decide batch's locking read (the decide's
# columns start with the payment's; the claim picks its due payments first), and has for a
# while: past parsing and planning, in its execution.
_IN_LOCKING_READ = (
    "SELECT 1 FROM pg_stat_activity WHERE pid = :pid AND state = 'active' "
    "AND (query LIKE 'SELECT payment.id, payment.merchant_id, %' "
    "OR query LIKE 'WITH picked AS MATERIALIZED %') "
    "AND clock_timestamp() - query_start > interval '100 milliseconds'"
)


async def _until(db: Database, pid: int, query: str) -> None:
    """Wait until `query` (over pg_stat_activity) finds the backend `pid`."""
    for _ in range(1000):
        async with db.session(SYSTEM_SCOPE) as s:
            if (await s.execute(text(query), {"pid": pid})).first() is not None:
                return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never reached: {query}")


async def _slow_start(uow: UnitOfWork) -> None:
    """Make the transaction's next statements spend their first moments (after their snapshot,
    before reading a row) compiling: the window in which the other transaction commits."""
    # The portal's connections run with JIT off; `pg_jit_available` is false while it is.
    await uow.session.execute(text("SET LOCAL jit = on"))
    available = await uow.session.execute(text("SELECT pg_jit_available()"))
    if not available.scalar_one():
        pytest.skip("the race needs PostgreSQL's JIT compiler to hold the statement open")
    for setting in ("jit_above_cost", "jit_inline_above_cost", "jit_optimize_above_cost"):
        await uow.session.execute(text(f"SET LOCAL {setting} = 0"))


async def _race(
    db: Database,
    first: Callable[[UnitOfWork], Awaitable[Any]],
    second: Callable[[UnitOfWork], Coroutine[Any, Any, Any]],
    *,
    second_waits: str,
    slow: bool = False,
) -> Any:
    """`first` runs and holds its transaction open; `second` starts in another; `first`
    commits once the query `second_waits` finds `second`'s backend; `second` commits."""
    async with db.uow(SYSTEM_SCOPE) as a:
        await first(a)
        await a.session.flush()
        async with db.uow(SYSTEM_SCOPE) as b:
            pid = await _backend(b)
            if slow:
                await _slow_start(b)
            running = asyncio.create_task(second(b))
            try:
                await _until(db, pid, second_waits)
                await a.commit()
                result = await asyncio.wait_for(running, timeout=30)
            finally:
                if not running.done():
                    running.cancel()
            await b.commit()
    return result


def _positions_are_distinct(steps: list[Any]) -> None:
    seqs = [t.seq for t in steps]
    assert sorted(seqs) == list(range(len(seqs))), [(t.event, t.seq) for t in steps]


async def test_a_manual_action_that_waited_for_another_writes_after_it(db: Database) -> None:
    [payment] = await fixed_schedule_payments(db, 1, T0)
    await decide(db, T0)
    principal = system_principal()

    async def again(uow: UnitOfWork) -> Any:
        return await retry_now(
            uow, principal=principal, payment_id=payment.id, reason="asked", now=T0
        )

    async def cancel(uow: UnitOfWork) -> Any:
        return await cancel_recovery(
            uow, principal=principal, payment_id=payment.id, reason="asked", now=T0
        )

    await _race(db, again, cancel, second_waits=_WAITING_FOR_LOCK)

    steps = await timeline(db, payment.id)
    assert [t.event for t in steps] == [
        "failure_ingested",
        "decision_made",
        "retry_requested",
        "recovery_canceled",
    ]
    _positions_are_distinct(steps)
    assert (await reload(db, payment.id)).state is PaymentState.CANCELED


async def test_a_claim_racing_a_retry_requested_writes_after_it(db: Database) -> None:
    """The claim's locking read starts before the person's retry commits and reaches the
    payment after: it is claimed (still due), and its timeline rows follow the retry's."""
    [payment] = await fixed_schedule_payments(db, 1, T0)
    await decide(db, T0)
    principal = system_principal()

    async def again(uow: UnitOfWork) -> Any:
        return await retry_now(
            uow, principal=principal, payment_id=payment.id, reason="asked", now=DAY1
        )

    async def claim(uow: UnitOfWork) -> Any:
        return await claim_due(uow, now=DAY1)

    applied = await _race(db, again, claim, second_waits=_IN_LOCKING_READ, slow=True)

    assert applied.enqueue == [(payment.id, 1)]
    steps = await timeline(db, payment.id)
    assert [t.event for t in steps] == [
        "failure_ingested",
        "decision_made",
        "retry_requested",
        "attempt_started",
    ]
    _positions_are_distinct(steps)


async def test_a_decision_racing_another_writer_writes_after_it(db: Database) -> None:
    """A payment not decided yet whose first timeline row another transaction writes (and
    commits) after the decide batch's locking read started: the decision follows that row
    and does not record the ingested failure a second time as the timeline's start."""
    [payment] = await fixed_schedule_payments(db, 1, T0)

    async def note(uow: UnitOfWork) -> None:
        # What any writer of the timeline does: lock the payment, add a row, change the payment.
        await uow.session.execute(
            text("SELECT id FROM payment WHERE id = :id FOR UPDATE"), {"id": payment.id}
        )
        await uow.session.execute(
            text(
                "INSERT INTO payment_transition (id, merchant_id, payment_id, seq, from_state, "
                "to_state, event, reason, actor, at) VALUES (:id, :merchant, :payment, 0, "
                "'PENDING', 'PENDING', 'failure_ingested', 'ingested', 'processor', :at)"
            ),
            {"id": uuid.uuid4(), "merchant": payment.merchant_id, "payment": payment.id, "at": T0},
        )
        await uow.session.execute(
            text("UPDATE payment SET updated_at = :at WHERE id = :id"),
            {"at": T0, "id": payment.id},
        )

    async def decide_batch(uow: UnitOfWork) -> int:
        return await decide_pending(uow, now=T0)

    decided = await _race(
        db,
        note,
        decide_batch,
        second_waits=_IN_LOCKING_READ,
        slow=True,
    )

    assert decided == 1
    steps = await timeline(db, payment.id)
    assert [t.event for t in steps] == ["failure_ingested", "decision_made"]
    _positions_are_distinct(steps)


class _Overlap:
    """A batch step (decide's or claim's) that waits a little before it runs, long enough for
    the other lane to start its own batch, and counts how many ran at once at most."""

    def __init__(self, step: Callable[..., Awaitable[Any]]) -> None:
        self._step = step
        self._running = 0
        self.most = 0

    async def run(self, uow: UnitOfWork, **kw: Any) -> Any:
        self._running += 1
        self.most = max(self.most, self._running)
        try:
            await asyncio.sleep(0.05)
            return await self._step(uow, **kw)
        finally:
            self._running -= 1


async def test_the_decide_job_runs_its_lanes_at_once_and_decides_each_payment_once(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decide cron's lanes are transactions at the same time, on payments of their own:
    a backlog of several batches is decided once each, every timeline from its start."""
    payments = await fixed_schedule_payments(db, 12, T0)
    monkeypatch.setattr(jobs_retry, "DECIDE_BATCH", 3)
    lanes = _Overlap(decide_pending)
    monkeypatch.setattr(jobs_retry, "decide_service", lanes.run)

    decided = await jobs_retry.decide_pending(cast(Any, {"db": db, "clock": FixedClock(T0)}))

    assert lanes.most == jobs_retry.DECIDE_LANES == 2
    assert decided == 12
    for payment in payments:
        steps = await timeline(db, payment.id)
        assert [(t.event, t.seq) for t in steps] == [("failure_ingested", 0), ("decision_made", 1)]
        assert (await reload(db, payment.id)).state is PaymentState.SCHEDULED


class _Deadlock(Exception):
    """What the driver raises when PostgreSQL fails a transaction to break a deadlock."""

    sqlstate = "40P01"


class _DeadlockOnce:
    """A batch step (decide's or claim's) whose first batch does its work and is then ended
    by PostgreSQL to break a deadlock; later batches run as they are."""

    def __init__(self, step: Callable[..., Awaitable[Any]]) -> None:
        self._step = step
        self.broken = 0

    async def run(self, uow: UnitOfWork, **kw: Any) -> Any:
        if self.broken == 0:
            self.broken += 1
            await self._step(uow, **kw)  # the batch's work, then PostgreSQL ends the transaction
            raise DBAPIError("UPDATE payment ...", None, _Deadlock())
        return await self._step(uow, **kw)


async def test_a_lane_takes_its_batch_again_when_postgresql_breaks_a_deadlock(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch failed by a deadlock (two lanes' stop-payment orders locking each other's
    payments) rolls back and is taken again; the other lane and the run go on."""
    payments = await fixed_schedule_payments(db, 6, T0)
    monkeypatch.setattr(jobs_retry, "DECIDE_BATCH", 3)
    deadlock = _DeadlockOnce(decide_pending)
    monkeypatch.setattr(jobs_retry, "decide_service", deadlock.run)

    decided = await jobs_retry.decide_pending(cast(Any, {"db": db, "clock": FixedClock(T0)}))

    assert deadlock.broken == 1
    assert decided == 6
    for payment in payments:
        steps = await timeline(db, payment.id)
        assert [(t.event, t.seq) for t in steps] == [("failure_ingested", 0), ("decision_made", 1)]


@pytest.fixture
async def claim_ctx(db: Database, services: Services) -> AsyncIterator[dict[str, Any]]:
    """What the claim job reads: the database, a clock, settings and a queue of its own."""
    name = f"test-claim-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(RedisSettings.from_dsn(services.redis_url), default_queue_name=name)
    try:
        yield {
            "db": db,
            "clock": FixedClock(DAY1 + timedelta(days=60)),
            "redis": pool,
            "settings": Settings(environment="test"),
        }
    finally:
        keys = [k async for k in pool.scan_iter(match=f"{job_key_prefix}attempt:*")]
        if keys:
            await pool.delete(*keys)
        await pool.delete(name)
        await pool.aclose()


async def _claimed_once(db: Database, claim_ctx: dict[str, Any], payments: list[Any]) -> None:
    """Each payment RETRYING with one attempt in flight, and its charge job queued once."""
    redis = claim_ctx["redis"]
    queued = await redis.zrange(redis.default_queue_name, 0, -1)
    for payment in payments:
        assert (await reload(db, payment.id)).state is PaymentState.RETRYING
        steps = await timeline(db, payment.id)
        assert [t.event for t in steps].count("attempt_started") == 1
        assert queued.count(attempt_job_id(payment.id, 1).encode()) == 1


async def test_the_claim_job_runs_its_lanes_at_once_and_claims_each_payment_once(
    db: Database, claim_ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim cron's lanes are transactions at the same time on payments of their own:
    a backlog of several batches is claimed once each, and each charge queued once."""
    start = claim_ctx["clock"].now() - timedelta(days=1)
    payments = await fixed_schedule_payments(db, 12, start)
    assert await decide(db, start) >= 12
    monkeypatch.setattr(jobs_retry, "CLAIM_BATCH", 3)
    lanes = _Overlap(claim_due)
    monkeypatch.setattr(jobs_retry, "claim_service", lanes.run)

    async def slow_enqueue(*args: Any) -> bool:
        await asyncio.sleep(0.2)  # both lanes' enqueues under way at once
        return await enqueue_attempt(*args)

    monkeypatch.setattr(jobs_retry, "enqueue_attempt", slow_enqueue)

    queued = await jobs_retry.claim_due(cast(Any, claim_ctx))

    assert lanes.most == jobs_retry.CLAIM_LANES == 2
    assert queued >= 12  # with any other test's payment due by then
    # Every job both lanes queued is counted (the queue is this test's own).
    redis = claim_ctx["redis"]
    assert queued == await redis.zcard(redis.default_queue_name)
    await _claimed_once(db, claim_ctx, payments)


async def test_a_claim_lane_takes_its_batch_again_when_postgresql_breaks_a_deadlock(
    db: Database, claim_ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim batch failed by a deadlock rolls back, queues nothing, and is taken again."""
    # Days after the other claim test's payments: none of those is left due.
    start = claim_ctx["clock"].now() + timedelta(days=30)
    claim_ctx["clock"] = FixedClock(start + timedelta(days=1))
    payments = await fixed_schedule_payments(db, 6, start)
    assert await decide(db, start) >= 6
    monkeypatch.setattr(jobs_retry, "CLAIM_BATCH", 3)
    deadlock = _DeadlockOnce(claim_due)
    monkeypatch.setattr(jobs_retry, "claim_service", deadlock.run)

    assert await jobs_retry.claim_due(cast(Any, claim_ctx)) >= 6
    assert deadlock.broken == 1
    await _claimed_once(db, claim_ctx, payments)


async def test_pausing_a_merchant_and_changing_its_policy_wait_for_no_writer_of_its_rows(
    db: Database,
) -> None:
    """A transaction that writes any row of a merchant holds the merchant row FOR KEY SHARE
    (its foreign key's check) until it ends. Pausing the merchant and changing its policy lock
    the row FOR NO KEY UPDATE, which that does not block: neither waits for the writer (nor,
    holding the row, makes the writer wait, which across two merchants deadlocked)."""
    [payment] = await fixed_schedule_payments(db, 1, T0)
    merchant_id = payment.merchant_id
    async with db.uow(SYSTEM_SCOPE) as writer:
        await writer.session.execute(
            text("SELECT 1 FROM merchant WHERE id = :m FOR KEY SHARE"), {"m": merchant_id}
        )
        async with db.uow(SYSTEM_SCOPE) as uow:
            await uow.session.execute(text("SET LOCAL lock_timeout = '2s'"))
            await set_recovery_status(
                uow,
                principal=system_principal(),
                merchant_id=merchant_id,
                status=MerchantStatus.PAUSED,
                reason="lock test",
                now=DAY1,
            )
            version = (await current_policies(uow.session, [merchant_id]))[merchant_id].version
            await update_retry_policy(
                uow,
                principal=system_principal(),
                merchant_id=merchant_id,
                expected_version=version,
                changes=PolicyChanges(fixed_schedule_days=[2, 4, 6]),
                reason="lock test",
                now=DAY1,
            )
            await uow.commit()
        await writer.rollback()
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchant = await uow.session.get(Merchant, merchant_id)
        assert merchant is not None
        assert merchant.status is MerchantStatus.PAUSED


async def test_an_attempt_is_read_as_committed_by_the_writer_the_lock_waited_for(
    db: Database,
) -> None:
    """Marking an attempt sent under the payment's lock, then committing: a run that waited for
    that lock sees the attempt sent (and so never drops an attempt about to be charged)."""
    [payment] = await fixed_schedule_payments(db, 1, T0)
    await decide(db, T0)
    async with db.uow(SYSTEM_SCOPE) as uow:
        # (Other tests' payments due by then are claimed too: the database is the module's.)
        assert (payment.id, 1) in (await claim_due(uow, now=DAY1)).enqueue
        await uow.commit()

    async def mark_sent(uow: UnitOfWork) -> None:
        await uow.session.execute(
            text("SELECT id FROM payment WHERE id = :id FOR UPDATE"), {"id": payment.id}
        )
        await uow.session.execute(
            text(
                "UPDATE payment_attempt SET sent_at = :at "
                "WHERE payment_id = :id AND portal_number = 1"
            ),
            {"at": DAY1, "id": payment.id},
        )

    async def read(uow: UnitOfWork) -> Any:
        return await retry_attempt._locked(uow, payment.id, 1)

    locked, attempt = await _race(db, mark_sent, read, second_waits=_WAITING_FOR_LOCK)

    assert locked is not None
    assert attempt is not None
    assert attempt.sent_at is not None
