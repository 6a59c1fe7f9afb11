"""Writers in real concurrent transactions, on a database of their own (not the test's
savepoint): two batches of the same records, each larger than a claim statement, wait for each
other in one order and never deadlock, whatever order each brought its records in; a bulk
cancel reaches only the payments its submission counted, not one whose batch began before it
and committed after."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import BulkActionStatus, PaymentState, Processor, Role
from app.models.payment import Payment
from app.processors.base import RawItem
from app.services import bulk_action, ingestion
from app.services.bulk_action import submit_cancel
from app.services.ingestion import IngestStats, land
from app.services.payment import PaymentFilter
from app.tenancy import SYSTEM_SCOPE, Principal
from tests.support.factories import make_merchant
from tests.support.ingestion import invoiced_charge
from tests.support.retry import ingest, make_connection, reload
from tests.support.scratch import scratch_database

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def db(services: Services) -> AsyncIterator[Database]:
    async with scratch_database(services, "portal_concurrent") as database:
        yield database


async def _until_blocked(db: Database, pid: int) -> None:
    """Until the backend `pid` waits for a lock another transaction holds."""
    async with db.read(SYSTEM_SCOPE) as session:
        for _ in range(500):
            query = text("SELECT cardinality(pg_blocking_pids(:pid)) > 0")
            if (await session.execute(query, {"pid": pid})).scalar_one():
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the second landing never waited for the first")


async def test_overlapping_batches_in_opposite_orders_never_deadlock(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first transaction claims its first statement's keys and stops until the second
    waits for one of them; then it goes on. Claimed chunk by chunk in each batch's own order,
    the second would by then hold keys of the first's next chunk (records sorted by hash,
    highest first: the first's first chunk is the highest hashes, the second's the lowest),
    and PostgreSQL would abort one of them as deadlocked. Claimed in one content-hash order
    across the batch, the second waits at the first key and lands nothing once the first
    commits."""
    merchant = await make_merchant(db, "Opposite orders", now=NOW)
    connection = await make_connection(db, merchant, NOW)
    count = ingestion.CHUNK + ingestion.CHUNK // 2
    items = [
        RawItem.from_json(invoiced_charge(f"ch_cross_{i}", invoice=f"in_cross_{i}"), f"c{i}")
        for i in range(count)
    ]
    items.sort(key=lambda item: item.content_hash, reverse=True)
    second_pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    first_claimed = asyncio.Event()

    async def first_landing() -> tuple[list[Any], IngestStats]:
        async with db.uow(SYSTEM_SCOPE) as first:
            claims = 0
            execute = first.session.execute

            async def claim_then_wait(statement: Any, *args: Any, **kw: Any) -> Any:
                nonlocal claims
                result = await execute(statement, *args, **kw)
                if statement is ingestion._CLAIM_KEYS:
                    claims += 1
                    if claims == 1:
                        first_claimed.set()
                        await _until_blocked(db, await second_pid)
                return result

            monkeypatch.setattr(first.session, "execute", claim_then_wait)
            landed = await land(first, connection, items, now=NOW)
            await first.commit()
            assert claims == 2
            return landed

    async def second_landing() -> tuple[list[Any], IngestStats]:
        async with db.uow(SYSTEM_SCOPE) as second:
            pid = (await second.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            second_pid.set_result(pid)
            await first_claimed.wait()
            landed = await land(second, connection, items[::-1], now=NOW)
            await second.commit()
            return landed

    (won, won_stats), (lost, lost_stats) = await asyncio.wait_for(
        asyncio.gather(first_landing(), second_landing()), timeout=60
    )
    assert (len(won), won_stats.landed, won_stats.duplicates) == (count, count, 0)
    assert (len(lost), lost_stats.landed, lost_stats.duplicates) == (0, 0, count)
    # The ids come back in the batch's own order, not the order their keys were claimed in.
    async with db.read(SYSTEM_SCOPE) as session:
        rows = await session.execute(
            text("SELECT id, content_hash FROM raw_record WHERE connection_id = :c"),
            {"c": connection.id},
        )
        stored: dict[uuid.UUID, str] = {row.id: row.content_hash for row in rows}
    assert [stored[x] for x in won] == [item.content_hash for item in items]


async def test_a_cancel_reaches_only_the_payments_its_submission_counted(db: Database) -> None:
    """A payment's creation time is its batch's time, taken before the batch commits: a batch
    that began before a bulk cancel was submitted and committed after it opens a payment the
    submission could not count, created before the action. With one counted payment ended
    since (recovered), a job bounded only by creation time and count cancels the new payment
    in its place; the job cancels only what the submission counted."""
    t0 = NOW
    merchant = await make_merchant(db, "Late batch", now=t0)
    connection = await make_connection(db, merchant, t0)
    counted = await ingest(
        db,
        connection,
        [invoiced_charge(f"ch_counted_{i}", invoice=f"in_counted_{i}") for i in range(3)],
        t0,
    )
    late = invoiced_charge("ch_late", invoice="in_late")
    prepared = ingestion.prepare(Processor.STRIPE, [RawItem.from_json(late, "ch_late")])
    support = Principal(key_id=uuid.uuid4(), name="desk", role=Role.SUPPORT, scope=SYSTEM_SCOPE)
    async with db.uow(SYSTEM_SCOPE) as batch:
        stats = await ingestion.ingest(batch, connection, prepared, now=t0 + timedelta(minutes=1))
        assert stats.payments_created == 1
        async with db.uow(SYSTEM_SCOPE) as uow:
            submitted = await submit_cancel(
                uow,
                principal=support,
                filters=PaymentFilter(),
                merchant_ids=[merchant.id],
                reason="merchant closed its billing",
                dry_run=False,
                client_mutation_id=None,
                now=t0 + timedelta(minutes=2),
            )
            await uow.commit()
        await batch.commit()
    assert submitted.count == 3
    assert submitted.action is not None
    async with db.read(SYSTEM_SCOPE) as session:
        opened = (
            await session.execute(
                select(Payment).where(col(Payment.processor_payment_id) == "ch_late")
            )
        ).scalar_one()
    assert opened.created_at < submitted.action.created_at
    # Before the job runs, one counted payment's invoice is paid.
    paid = invoiced_charge("ch_counted_2_paid", status="succeeded", invoice="in_counted_2")
    await ingest(db, connection, [paid], t0 + timedelta(minutes=3))
    assert (await reload(db, counted[2].id)).state is PaymentState.RECOVERED

    action = await bulk_action.run(
        db, submitted.action.id, clock=FixedClock(t0 + timedelta(minutes=5))
    )

    assert action is not None
    assert (action.status, action.succeeded_count) == (BulkActionStatus.SUCCEEDED, 2)
    assert [(await reload(db, p.id)).state for p in counted] == [
        PaymentState.CANCELED,
        PaymentState.CANCELED,
        PaymentState.RECOVERED,
    ]
    assert (await reload(db, opened.id)).state is PaymentState.PENDING
