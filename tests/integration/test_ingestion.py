"""Landing and normalization: raw first, idempotent upserts, invoice links, replay, dead letters."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, func, select

from app.clock import FixedClock, SystemClock
from app.crypto import CredentialBox
from app.db import Database
from app.enums import Actor, AttemptOutcome, PaymentState, Processor
from app.models.ingestion import DeadLetter, ProcessorConnection, RawRecord
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.processors.base import RawItem
from app.services.connection import create_connection
from app.services.ingestion import land, normalize_raw_records, replay_connection
from app.tenancy import SYSTEM_SCOPE, system_principal
from tests.support.factories import SANDBOX_URLS, make_merchant

BOX = CredentialBox("test-secret")
T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


def stripe_charge(
    charge_id: str,
    *,
    status: str = "failed",
    invoice: str | None = "in_1",
    created: datetime = T0,
    reason: str = "insufficient_funds",
    amount: int = 2900,
) -> dict[str, Any]:
    failed = status == "failed"
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "currency": "usd",
        "created": int(created.timestamp()),
        "customer": "cus_A",
        "invoice": invoice,
        "status": status,
        "paid": not failed,
        "failure_code": "card_declined" if failed else None,
        "outcome": {
            "type": "issuer_declined" if failed else "authorized",
            "reason": reason if failed else None,
            "network_status": "declined_by_network" if failed else "approved_by_network",
        },
        "payment_method_details": {
            "type": "card",
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": 4,
                "exp_year": 2029,
                "fingerprint": "fpA",
                "funding": "debit",
                "last4": "4242",
            },
        },
    }


async def _connection(db: Database, merchant: Merchant, now: datetime) -> ProcessorConnection:
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = await create_connection(
            uow,
            principal=system_principal(),
            merchant_id=merchant.id,
            kind=Processor.STRIPE,
            base_url="http://127.0.0.1:1/stripe",
            policy=SANDBOX_URLS,
            credentials={"api_key": "sk_test_x"},
            box=BOX,
            now=now,
        )
        await uow.commit()
    return connection


async def _ingest(
    db: Database, connection: ProcessorConnection, records: list[dict[str, Any]], now: datetime
) -> tuple[int, int]:
    async with db.uow(SYSTEM_SCOPE) as uow:
        ids, stats = await land(
            uow, connection, [RawItem.from_json(r, str(r.get("id"))) for r in records], now=now
        )
        await normalize_raw_records(uow, connection, ids, now=now)
        await uow.commit()
    return stats.landed, stats.duplicates


async def _payments(db: Database, merchant: Merchant) -> list[Payment]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(select(Payment).where(col(Payment.merchant_id) == merchant.id))
        return list(rows.scalars())


async def _attempts(db: Database, payment: Payment) -> list[PaymentAttempt]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(PaymentAttempt)
            .where(col(PaymentAttempt.payment_id) == payment.id)
            .order_by(col(PaymentAttempt.number))
        )
        return list(rows.scalars())


async def test_failure_opens_a_payment_and_landing_twice_changes_nothing(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Ingest", now=clock.now())
    connection = await _connection(db, merchant, clock.now())
    charges = [stripe_charge("ch_1"), stripe_charge("ch_ok", status="succeeded", invoice="in_9")]
    assert await _ingest(db, connection, charges, clock.now()) == (2, 0)
    assert await _ingest(db, connection, charges + charges[:1], clock.now()) == (0, 3)
    [payment] = await _payments(db, merchant)
    assert payment.processor_payment_id == "ch_1"
    assert payment.state is PaymentState.PENDING
    assert payment.amount_minor == 2900
    assert payment.currency == "USD"
    assert payment.decline_category == "insufficient_funds"
    assert payment.normalizer_version == 1
    assert payment.card_id is not None
    [attempt] = await _attempts(db, payment)
    assert (attempt.number, attempt.outcome, attempt.actor) == (
        1,
        AttemptOutcome.DECLINED,
        Actor.PROCESSOR,
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
    connection = await _connection(db, merchant, clock.now())
    await _ingest(db, connection, [stripe_charge("ch_1")], clock.now())
    later = [
        stripe_charge("ch_2", created=T0 + timedelta(days=2), reason="do_not_honor"),
        stripe_charge("ch_3", status="succeeded", created=T0 + timedelta(days=4)),
    ]
    await _ingest(db, connection, later, clock.now())
    [payment] = await _payments(db, merchant)
    assert payment.state is PaymentState.RECOVERED
    assert payment.recovered_by is Actor.PROCESSOR
    assert payment.recovered_at == T0 + timedelta(days=4)
    assert payment.attempt_count == 3
    attempts = await _attempts(db, payment)
    assert [(a.number, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.DECLINED),
        (2, AttemptOutcome.DECLINED),
        (3, AttemptOutcome.SUCCEEDED),
    ]
    # A later success on the same (now closed) invoice does not count twice.
    await _ingest(
        db,
        connection,
        [stripe_charge("ch_4", status="succeeded", created=T0 + timedelta(days=5))],
        clock.now(),
    )
    [payment] = await _payments(db, merchant)
    assert payment.attempt_count == 3


async def test_out_of_order_batch_is_applied_in_time_order(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Order", now=clock.now())
    connection = await _connection(db, merchant, clock.now())
    batch = [
        stripe_charge("ch_3", status="succeeded", created=T0 + timedelta(days=3)),
        stripe_charge("ch_1"),
    ]
    await _ingest(db, connection, batch, clock.now())
    [payment] = await _payments(db, merchant)
    assert payment.processor_payment_id == "ch_1"
    assert payment.state is PaymentState.RECOVERED


async def test_malformed_record_is_dead_lettered_and_the_batch_goes_on(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Dead letters", now=clock.now())
    connection = await _connection(db, merchant, clock.now())
    broken = stripe_charge("ch_bad")
    broken["amount"] = "lots"
    await _ingest(db, connection, [broken, stripe_charge("ch_good", invoice="in_2")], clock.now())
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
    connection = await _connection(db, merchant, clock.now())
    charges = [
        stripe_charge("ch_1"),
        stripe_charge("ch_2", created=T0 + timedelta(days=1)),
        stripe_charge("ch_3", status="succeeded", created=T0 + timedelta(days=2)),
        stripe_charge("ch_5", invoice="in_5", reason="stolen_card"),
    ]
    await _ingest(db, connection, charges, clock.now())

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
    connection = await _connection(db, merchant, clock.now())
    charges = [
        stripe_charge(f"ch_{i}", invoice=f"in_{i}", created=T0 + timedelta(minutes=i))
        for i in range(count)
    ]
    await _ingest(db, connection, charges, clock.now())
    assert len(await _payments(db, merchant)) == count


async def test_card_numbers_never_reach_the_raw_table(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "PAN", now=clock.now())
    connection = await _connection(db, merchant, clock.now())
    charge = stripe_charge("ch_pan")
    charge["payment_method_details"]["card"]["number"] = "4242424242424242"
    charge["description"] = "card 4000 0566 5566 5556 on file"
    await _ingest(db, connection, [charge], clock.now())
    async with db.session(SYSTEM_SCOPE) as s:
        payload = await s.scalar(
            select(RawRecord.payload).where(col(RawRecord.connection_id) == connection.id)
        )
    text = str(payload)
    assert "4242424242424242" not in text
    assert "4000 0566 5566 5556" not in text
    assert len(await _payments(db, merchant)) == 1
