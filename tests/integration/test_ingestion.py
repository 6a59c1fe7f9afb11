"""Landing and normalization: raw first, idempotent upserts, invoice links, replay, dead letters."""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, func, select

from app.clock import FixedClock, SystemClock
from app.db import Database
from app.enums import Actor, AttemptOutcome, PaymentState
from app.models.ingestion import DeadLetter, RawRecord, RawRecordKey
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.processors.base import RawItem
from app.processors.normalize.records import NORMALIZER_VERSION
from app.services.ingestion import IngestStats, land
from app.tenancy import SYSTEM_SCOPE
from app.workflows.replay import replay_connection
from tests.support.factories import make_merchant
from tests.support.ingestion import T0, invoiced_charge
from tests.support.retry import attempts_of, land_records, make_connection


async def _payments(db: Database, merchant: Merchant) -> list[Payment]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(select(Payment).where(col(Payment.merchant_id) == merchant.id))
        return list(rows.scalars())


async def test_failure_opens_a_payment_and_landing_twice_changes_nothing(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Ingest", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    charges = [
        invoiced_charge("ch_1"),
        invoiced_charge("ch_ok", status="succeeded", invoice="in_9"),
    ]
    assert await land_records(db, connection, charges, clock.now()) == (2, 0)
    assert await land_records(db, connection, charges + charges[:1], clock.now()) == (0, 3)
    [payment] = await _payments(db, merchant)
    assert payment.processor_payment_id == "ch_1"
    assert payment.state is PaymentState.PENDING
    assert payment.amount_minor == 2900
    assert payment.currency == "USD"
    assert payment.decline_category == "insufficient_funds"
    assert payment.normalizer_version == NORMALIZER_VERSION
    assert payment.card_id is not None
    [attempt] = await attempts_of(db, payment.id)
    # A charge on a Stripe Billing invoice: the billing system made it.
    assert (attempt.number, attempt.outcome, attempt.actor) == (
        1,
        AttemptOutcome.DECLINED,
        Actor.BILLING_SYSTEM,
    )
    async with db.session(SYSTEM_SCOPE) as s:
        raw = await s.scalar(
            select(func.count())
            .select_from(RawRecord)
            .where(col(RawRecord.connection_id) == connection.id)
        )
    assert raw == 2  # the ordinary success is kept raw, but opens no payment


async def test_processor_retries_and_recovery_on_the_same_invoice(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Linking", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    await land_records(db, connection, [invoiced_charge("ch_1")], clock.now())
    later = [
        invoiced_charge("ch_2", created=T0 + timedelta(days=2), reason="do_not_honor"),
        invoiced_charge("ch_3", status="succeeded", created=T0 + timedelta(days=4)),
    ]
    await land_records(db, connection, later, clock.now())
    [payment] = await _payments(db, merchant)
    assert payment.state is PaymentState.RECOVERED
    assert payment.recovered_by is Actor.BILLING_SYSTEM
    assert payment.recovered_at == T0 + timedelta(days=4)
    assert payment.attempt_count == 3
    attempts = await attempts_of(db, payment.id)
    assert [(a.number, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.DECLINED),
        (2, AttemptOutcome.DECLINED),
        (3, AttemptOutcome.SUCCEEDED),
    ]
    # A later success on the same (now closed) invoice does not count twice.
    await land_records(
        db,
        connection,
        [invoiced_charge("ch_4", status="succeeded", created=T0 + timedelta(days=5))],
        clock.now(),
    )
    [payment] = await _payments(db, merchant)
    assert payment.attempt_count == 3


async def test_out_of_order_batch_is_applied_in_time_order(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Order", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    batch = [
        invoiced_charge("ch_3", status="succeeded", created=T0 + timedelta(days=3)),
        invoiced_charge("ch_1"),
    ]
    await land_records(db, connection, batch, clock.now())
    [payment] = await _payments(db, merchant)
    assert payment.processor_payment_id == "ch_1"
    assert payment.state is PaymentState.RECOVERED


async def test_malformed_record_is_dead_lettered_and_the_batch_goes_on(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Dead letters", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    broken = invoiced_charge("ch_bad")
    broken["amount"] = "lots"
    await land_records(
        db, connection, [broken, invoiced_charge("ch_good", invoice="in_2")], clock.now()
    )
    assert [p.processor_payment_id for p in await _payments(db, merchant)] == ["ch_good"]
    async with db.session(SYSTEM_SCOPE) as s:
        letters = (
            (
                await s.execute(
                    select(DeadLetter).where(col(DeadLetter.connection_id) == connection.id)
                )
            )
            .scalars()
            .all()
        )
    [letter] = letters
    assert "amount" in letter.reason


async def test_replay_gives_the_same_clean_rows(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Replay", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    charges = [
        invoiced_charge("ch_1"),
        invoiced_charge("ch_2", created=T0 + timedelta(days=1)),
        invoiced_charge("ch_3", status="succeeded", created=T0 + timedelta(days=2)),
        invoiced_charge("ch_5", invoice="in_5", reason="stolen_card"),
    ]
    await land_records(db, connection, charges, clock.now())

    def snapshot(payments: list[Payment]) -> list[tuple[Any, ...]]:
        return sorted(
            (p.id, p.state, p.decline_category, p.attempt_count, p.recovered_at) for p in payments
        )

    before = snapshot(await _payments(db, merchant))
    stats = await replay_connection(db, connection.id, since=None, clock=SystemClock())
    assert stats.normalized == 4
    assert stats.payments_created == 0
    assert snapshot(await _payments(db, merchant)) == before


@pytest.mark.parametrize("count", [1, 250])
async def test_landing_is_set_based(db: Database, clock: FixedClock, count: int) -> None:
    merchant = await make_merchant(db, f"Bulk {count}", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    charges = [
        invoiced_charge(f"ch_{i}", invoice=f"in_{i}", created=T0 + timedelta(minutes=i))
        for i in range(count)
    ]
    await land_records(db, connection, charges, clock.now())
    assert len(await _payments(db, merchant)) == count


async def test_card_numbers_never_reach_the_raw_table(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "PAN", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    charge = invoiced_charge("ch_pan")
    charge["payment_method_details"]["card"]["number"] = "4242424242424242"
    charge["description"] = "card 4000 0566 5566 5556 on file"
    await land_records(db, connection, [charge], clock.now())
    async with db.session(SYSTEM_SCOPE) as s:
        payload = await s.scalar(
            select(RawRecord.payload).where(col(RawRecord.connection_id) == connection.id)
        )
    text = str(payload)
    assert "4242424242424242" not in text
    assert "4000 0566 5566 5556" not in text
    assert len(await _payments(db, merchant)) == 1


async def test_two_transactions_landing_the_same_records_store_them_once(
    db: Database, clock: FixedClock
) -> None:
    """A batch claims its records' keys before its rows: a second transaction landing some of
    the same records waits for the first, then stores only the records it alone brought, and
    every key is held by the raw row that landed with it."""
    merchant = await make_merchant(db, "Race", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    items = [RawItem.from_json(invoiced_charge(f"ch_race_{i}"), f"ch_race_{i}") for i in range(4)]
    async with db.uow(SYSTEM_SCOPE) as first:
        won, _ = await land(first, connection, items[:3], now=clock.now())

        async def second_landing() -> tuple[list[Any], IngestStats]:
            async with db.uow(SYSTEM_SCOPE) as second:
                landed = await land(second, connection, items[1:], now=clock.now())
                await second.commit()
                return landed

        waiting = asyncio.create_task(second_landing())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # waits for the first transaction's keys
        await first.commit()
    lost, stats = await asyncio.wait_for(waiting, timeout=10)
    assert len(won) == 3
    assert len(lost) == 1
    assert (stats.landed, stats.duplicates) == (1, 2)
    async with db.session(SYSTEM_SCOPE) as s:
        held = (
            await s.execute(
                select(func.count())
                .select_from(RawRecord)
                .join(RawRecordKey, col(RawRecordKey.raw_record_id) == col(RawRecord.id))
                .where(
                    col(RawRecord.connection_id) == connection.id,
                    col(RawRecordKey.content_hash) == col(RawRecord.content_hash),
                )
            )
        ).scalar_one()
        keys = await s.scalar(
            select(func.count())
            .select_from(RawRecordKey)
            .where(col(RawRecordKey.connection_id) == connection.id)
        )
    assert held == keys == 4
