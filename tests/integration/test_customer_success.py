"""Customer successes: stored once per charge from ingestion, read as of a payment's failure."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from app.clock import FixedClock, SystemClock
from app.db import Database
from app.models.customer import CustomerSuccess
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services.model_registry import failure_history
from app.services.retry.ledger import load_contexts
from app.tenancy import SYSTEM_SCOPE
from app.workflows.replay import replay_connection
from jobs.model import failure_row, history_row
from tests.support.factories import make_merchant
from tests.support.ingestion import T0, invoiced_charge
from tests.support.retry import land_records, make_connection
from tests.support.statements import count_statements

DAY = timedelta(days=1)


def success(charge_id: str, at: datetime, **extra: Any) -> dict[str, Any]:
    """An ordinary successful charge: its invoice has no payment in recovery."""
    return {**invoiced_charge(charge_id, status="succeeded", invoice=None, created=at), **extra}


async def _stored(db: Database, merchant: Merchant) -> list[tuple[str, datetime]]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(col(CustomerSuccess.processor_payment_id), col(CustomerSuccess.succeeded_at))
            .where(col(CustomerSuccess.merchant_id) == merchant.id)
            .order_by(col(CustomerSuccess.succeeded_at))
        )
        return [(charge, at) for charge, at in rows.all()]


async def _payment(db: Database, merchant: Merchant, charge_id: str) -> Payment:
    async with db.session(SYSTEM_SCOPE) as s:
        return (
            await s.execute(
                select(Payment).where(
                    col(Payment.merchant_id) == merchant.id,
                    col(Payment.processor_payment_id) == charge_id,
                )
            )
        ).scalar_one()


async def test_ordinary_successes_are_stored_once_per_charge(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Successes", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    charges = [
        success("ch_ok1", T0 - 40 * DAY),
        success("ch_ok2", T0 - 20 * DAY),
        invoiced_charge("ch_1"),
    ]
    await land_records(db, connection, charges, clock.now())
    expected = [("ch_ok1", T0 - 40 * DAY), ("ch_ok2", T0 - 20 * DAY)]
    assert await _stored(db, merchant) == expected
    # The same records again, and the same charge delivered with a different payload.
    await land_records(db, connection, charges, clock.now())
    assert await land_records(
        db, connection, [success("ch_ok2", T0 - 20 * DAY, description="re-sent")], clock.now()
    ) == (1, 0)
    assert await _stored(db, merchant) == expected
    stats = await replay_connection(db, connection.id, since=None, clock=SystemClock())
    assert stats.normalized == 4
    assert await _stored(db, merchant) == expected


async def test_a_batch_of_successes_is_stored_in_one_statement(
    connection: AsyncConnection, db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Bulk successes", now=clock.now())
    # The customer is stored first: a batch that creates its customers reads none back, so
    # both measured batches find theirs stored.
    first = await make_connection(db, merchant, clock.now())
    await land_records(db, first, [success("ch_first", T0 - timedelta(days=30))], clock.now())
    counts = []
    for n in (1, 60):
        source = await make_connection(db, merchant, clock.now())
        charges = [success(f"ch_{n}_{i}", T0 - i * timedelta(hours=5)) for i in range(n)]
        with count_statements(connection) as statements:
            await land_records(db, source, charges, clock.now())
        counts.append(len(statements))
    assert counts[0] == counts[1]
    assert len(await _stored(db, merchant)) == 62


async def test_views_carry_country_and_successes_before_the_first_failure_only(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Views", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    await land_records(
        db,
        connection,
        [
            success("ch_ok1", T0 - 60 * DAY),
            # An earlier payment, recovered by the processor: its success counts as well.
            invoiced_charge("ch_0", invoice="in_0", created=T0 - 50 * DAY),
            invoiced_charge("ch_0ok", status="succeeded", invoice="in_0", created=T0 - 45 * DAY),
            success("ch_ok2", T0 - 30 * DAY),
            invoiced_charge("ch_1", invoice="in_1"),
            # After the failure: the payment's own recovery and another charge.
            success("ch_ok3", T0 + 3 * DAY),
            invoiced_charge("ch_1ok", status="succeeded", invoice="in_1", created=T0 + 4 * DAY),
        ],
        clock.now(),
    )
    payment = await _payment(db, merchant, "ch_1")
    earlier = await _payment(db, merchant, "ch_0")
    before = (T0 - 60 * DAY, T0 - 45 * DAY, T0 - 30 * DAY)
    async with db.session(SYSTEM_SCOPE) as s:
        contexts = await load_contexts(s, [payment.id, earlier.id], now=T0 + 10 * DAY)
        history = {f.payment_id: f for f in await failure_history(s, since=None, until=T0 + DAY)}
    view = contexts[payment.id].view()
    assert view.issuer_country == "US"
    assert view.past_success_at == before
    assert contexts[earlier.id].view().past_success_at == (T0 - 60 * DAY,)

    stored = history[payment.id]
    assert stored.issuer_country == "US"
    assert stored.past_success_at == before
    assert history[earlier.id].past_success_at == (T0 - 60 * DAY,)
    # Training reads a stored failure exactly as serving reads the payment.
    served, trained = failure_row(view), history_row(stored)
    assert (served.country, served.past_success_at) == ("US", before)
    assert (trained.country, trained.past_success_at) == ("US", before)
    assert all(t < trained.failed_at for t in trained.past_success_at)


async def test_views_keep_the_latest_successes_only(db: Database, clock: FixedClock) -> None:
    merchant = await make_merchant(db, "Latest", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())
    times = [T0 - (10 + 9 * i) * DAY for i in range(9)]
    charges = [success(f"ch_ok{i}", at) for i, at in enumerate(times)]
    await land_records(db, connection, [*charges, invoiced_charge("ch_1")], clock.now())
    payment = await _payment(db, merchant, "ch_1")
    async with db.session(SYSTEM_SCOPE) as s:
        contexts = await load_contexts(s, [payment.id], now=T0)
    assert contexts[payment.id].view().past_success_at == tuple(sorted(times)[-6:])


async def test_charges_without_a_customer_are_nobodys_pay_cycle(
    db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Anonymous", now=clock.now())
    connection = await make_connection(db, merchant, clock.now())

    def anonymous(charge: dict[str, Any]) -> dict[str, Any]:
        return {**charge, "customer": None}

    await land_records(
        db,
        connection,
        [
            anonymous(success("ch_ok", T0 - 20 * DAY)),
            anonymous(invoiced_charge("ch_0", invoice="in_0", created=T0 - 10 * DAY)),
            anonymous(
                invoiced_charge("ch_0ok", status="succeeded", invoice="in_0", created=T0 - 9 * DAY)
            ),
            anonymous(invoiced_charge("ch_1", invoice="in_1")),
        ],
        clock.now(),
    )
    assert await _stored(db, merchant) == []
    payment = await _payment(db, merchant, "ch_1")
    async with db.session(SYSTEM_SCOPE) as s:
        contexts = await load_contexts(s, [payment.id], now=T0)
    assert contexts[payment.id].view().past_success_at == ()
