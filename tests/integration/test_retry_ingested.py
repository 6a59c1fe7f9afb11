"""Outcomes read by ingestion go through the state machine: paid elsewhere, a new card."""

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import Database
from app.enums import Actor, PaymentState
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment
from app.services.retry.ingested import apply_ingested_events
from app.tenancy import SYSTEM_SCOPE
from tests.support.factories import make_merchant
from tests.support.retry import (
    decide,
    ingest,
    make_connection,
    outbox,
    reload,
    stripe_charge,
    timeline,
)
from tests.support.statements import count_statements

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
P = PaymentState


async def _connection(db: Database) -> ProcessorConnection:
    merchant = await make_merchant(db, f"Ingested {uuid.uuid4().hex[:6]}", now=T0)
    return await make_connection(db, merchant, T0)


async def _never_retry(
    db: Database, subscription: str | None = None
) -> tuple[ProcessorConnection, Payment]:
    """A payment blocked by a card-bound "never" (a stolen card), decided NOT_RETRYABLE."""
    connection = await _connection(db)
    first = stripe_charge("ch_1", created=T0, reason="stolen_card", subscription=subscription)
    [payment] = await ingest(db, connection, [first], T0)
    await decide(db, T0)
    return connection, payment


async def test_success_on_a_scheduled_invoice_is_a_recorded_transition(db: Database) -> None:
    connection = await _connection(db)
    [payment] = await ingest(db, connection, [stripe_charge("ch_1", created=T0)], T0)
    await decide(db, T0)
    assert (await reload(db, payment.id)).state is P.SCHEDULED
    paid_at = T0 + timedelta(hours=5)
    # Stripe Billing retried the invoice on its own (a charge on the invoice, off-session).
    success = stripe_charge("ch_2", created=paid_at, status="succeeded", invoice="in_ch_1")
    await ingest(db, connection, [success], T0 + timedelta(hours=6))
    after = await reload(db, payment.id)
    assert after.state is P.RECOVERED
    assert after.recovered_by is Actor.BILLING_SYSTEM
    assert after.recovered_at == paid_at
    assert after.next_retry_at is None
    assert after.attempt_count == 2
    last = (await timeline(db, payment.id))[-1]
    assert (last.from_state, last.to_state, last.event, last.actor) == (
        P.SCHEDULED,
        P.RECOVERED,
        "paid_elsewhere",
        "billing_system",
    )
    assert last.at == T0 + timedelta(hours=6)
    assert await outbox(db, payment.id) == ["payment.scheduled", "payment.recovered"]


async def test_a_success_read_twice_recovers_once(db: Database) -> None:
    connection = await _connection(db)
    [payment] = await ingest(db, connection, [stripe_charge("ch_1", created=T0)], T0)
    await decide(db, T0)
    paid = [{"id": payment.id, "recovered_at": T0 + timedelta(hours=1), "actor": Actor.CUSTOMER}]
    async with db.uow(SYSTEM_SCOPE) as uow:
        first = await apply_ingested_events(uow, paid=paid, cards_seen=[], now=T0)
        again = [
            {"id": payment.id, "recovered_at": T0 + timedelta(hours=2), "actor": Actor.PROCESSOR}
        ]
        second = await apply_ingested_events(uow, paid=again, cards_seen=[], now=T0)
        await uow.commit()
    assert (first.recovered, second.recovered, second.transitions) == (1, 0, 0)
    after = await reload(db, payment.id)
    assert after.recovered_at == T0 + timedelta(hours=1)
    assert after.recovered_by is Actor.CUSTOMER  # the first reading's, not the repeat's
    assert (await outbox(db, payment.id)).count("payment.recovered") == 1
    assert [t.event for t in await timeline(db, payment.id)].count("paid_elsewhere") == 1


async def test_recoveries_cost_the_same_statements_whatever_their_number(
    connection: AsyncConnection, db: Database
) -> None:
    counts = []
    for n in (1, 8):
        processor_connection = await _connection(db)
        prefix = uuid.uuid4().hex[:6]
        failures = [
            stripe_charge(f"ch_{prefix}_{i}", created=T0, customer=f"cus_{prefix}_{i}")
            for i in range(n)
        ]
        payments = await ingest(db, processor_connection, failures, T0)
        await decide(db, T0)
        successes = [
            stripe_charge(
                f"ch_{prefix}_{i}_paid",
                created=T0 + timedelta(hours=2),
                status="succeeded",
                customer=f"cus_{prefix}_{i}",
                invoice=f"in_ch_{prefix}_{i}",
            )
            for i in range(n)
        ]
        with count_statements(connection) as seen:
            await ingest(db, processor_connection, successes, T0 + timedelta(hours=3))
        counts.append(len(seen))
        assert {(await reload(db, p.id)).state for p in payments} == {P.RECOVERED}
    assert counts[0] == counts[1]


async def test_new_card_of_the_customer_lifts_a_hard_never(db: Database) -> None:
    connection, payment = await _never_retry(db, subscription="sub_1")
    blocked = await reload(db, payment.id)
    assert blocked.state is P.NOT_RETRYABLE
    assert blocked.blocking_rule == "decline_advice_never"
    # The subscription's next invoice is paid with another card: the credential was replaced.
    other = stripe_charge(
        "ch_2",
        created=T0 + timedelta(days=2),
        status="succeeded",
        invoice="in_next",
        fingerprint="fpB",
        exp=(9, 2031),
        subscription="sub_1",
    )
    await ingest(db, connection, [other], T0 + timedelta(days=2))
    reopened = await reload(db, payment.id)
    assert reopened.state is P.PENDING
    assert reopened.credential_since == T0 + timedelta(days=2)
    assert reopened.needs_decision
    last = (await timeline(db, payment.id))[-1]
    assert (last.from_state, last.to_state, last.event, last.actor) == (
        P.NOT_RETRYABLE,
        P.PENDING,
        "credential_updated",
        "processor",
    )
    await decide(db, T0 + timedelta(days=2))
    decided = await reload(db, payment.id)
    assert decided.state is P.SCHEDULED
    assert decided.next_retry_at is not None
    assert decided.next_retry_at >= T0 + timedelta(days=2)


async def test_the_same_card_or_an_older_charge_changes_nothing(db: Database) -> None:
    connection, payment = await _never_retry(db)
    same_card = stripe_charge(
        "ch_2", created=T0 + timedelta(days=1), status="succeeded", invoice="in_next"
    )
    older = stripe_charge(
        "ch_3",
        created=T0 - timedelta(days=3),
        status="succeeded",
        invoice="in_old",
        fingerprint="fpB",
    )
    await ingest(db, connection, [same_card, older], T0 + timedelta(days=1))
    after = await reload(db, payment.id)
    assert after.state is P.NOT_RETRYABLE
    assert after.credential_since is None
    assert [t.event for t in await timeline(db, payment.id)] == ["failure_ingested"]


async def test_a_hard_declined_new_card_or_a_stop_payment_lifts_nothing(db: Database) -> None:
    connection = await _connection(db)
    [never, revoked] = await ingest(
        db,
        connection,
        [
            stripe_charge("ch_1", created=T0, reason="stolen_card", subscription="sub_1"),
            stripe_charge(
                "ch_2",
                created=T0,
                reason="stop_payment_order",
                customer="cus_B",
                fingerprint="fpR",
                subscription="sub_2",
            ),
        ],
        T0,
    )
    await decide(db, T0)
    assert (await reload(db, revoked.id)).blocking_rule == "stop_payment"
    lost_too = stripe_charge(
        "ch_3",
        created=T0 + timedelta(days=1),
        reason="lost_card",
        fingerprint="fpB",
        subscription="sub_1",
    )
    await ingest(db, connection, [lost_too], T0 + timedelta(days=1))
    assert (await reload(db, never.id)).state is P.NOT_RETRYABLE
    works = [
        stripe_charge(
            "ch_4",
            created=T0 + timedelta(days=2),
            status="succeeded",
            fingerprint="fpC",
            subscription="sub_1",
        ),
        stripe_charge(
            "ch_5",
            created=T0 + timedelta(days=2),
            status="succeeded",
            customer="cus_B",
            fingerprint="fpD",
            subscription="sub_2",
        ),
    ]
    await ingest(db, connection, works, T0 + timedelta(days=2))
    assert (await reload(db, never.id)).state is P.PENDING
    # A stop-payment revokes the mandate, not the card: it stays, without a timeline row.
    still = await reload(db, revoked.id)
    assert still.state is P.NOT_RETRYABLE
    assert still.credential_since == T0 + timedelta(days=2)
    assert [t.event for t in await timeline(db, revoked.id)] == ["failure_ingested"]


async def test_new_card_on_a_scheduled_payment_asks_for_a_new_decision(db: Database) -> None:
    connection = await _connection(db)
    [payment] = await ingest(db, connection, [stripe_charge("ch_1", created=T0)], T0)
    await decide(db, T0)
    # The billing system retried the same invoice on the customer's new card.
    retried = stripe_charge(
        "ch_2", created=T0 + timedelta(hours=3), invoice="in_ch_1", fingerprint="fpB"
    )
    await ingest(db, connection, [retried], T0 + timedelta(hours=3))
    after = await reload(db, payment.id)
    assert after.state is P.SCHEDULED
    assert after.credential_since == T0 + timedelta(hours=3)
    assert after.needs_decision
    assert after.attempt_count == 2
    assert [t.event for t in await timeline(db, payment.id)][-1] == "credential_updated"


async def test_a_closed_invoice_seen_on_a_new_card_is_not_reopened(db: Database) -> None:
    connection, payment = await _never_retry(db)
    # The same invoice fails again on a new card: ingestion opens a payment for it, and the
    # closed one stays closed, so the invoice is never in recovery twice.
    again = stripe_charge(
        "ch_2", created=T0 + timedelta(days=1), invoice="in_ch_1", fingerprint="fpB"
    )
    [opened] = await ingest(db, connection, [again], T0 + timedelta(days=1))
    assert opened.id != payment.id
    assert (await reload(db, payment.id)).state is P.NOT_RETRYABLE
    assert (await reload(db, opened.id)).state is P.PENDING


async def test_a_success_on_an_invoice_that_ended_unpaid_recovers_it(db: Database) -> None:
    connection, payment = await _never_retry(db)
    assert (await reload(db, payment.id)).state is P.NOT_RETRYABLE
    # The customer paid the invoice some other way, days later: the money is recovered all the
    # same, and counted once however often the charge is read.
    paid_at = T0 + timedelta(days=3)
    # On the hosted invoice page: 3-D Secure shows the customer made the payment.
    success = stripe_charge(
        "ch_9", created=paid_at, status="succeeded", invoice="in_ch_1", secure=True
    )
    for _ in range(2):
        await ingest(db, connection, [success], T0 + timedelta(days=3, hours=1))
    after = await reload(db, payment.id)
    assert after.state is P.RECOVERED
    assert after.recovered_by is Actor.CUSTOMER
    assert after.recovered_at == paid_at
    assert after.attempt_count == 2
    last = (await timeline(db, payment.id))[-1]
    assert (last.from_state, last.to_state, last.event) == (
        P.NOT_RETRYABLE,
        P.RECOVERED,
        "paid_elsewhere",
    )
    assert (await outbox(db, payment.id)).count("payment.recovered") == 1


async def test_another_subscription_on_another_card_lifts_nothing(db: Database) -> None:
    """The old card may still be the customer's default, which a retry would charge."""
    connection, payment = await _never_retry(db, subscription="sub_1")
    elsewhere = [
        stripe_charge(
            "ch_2",
            created=T0 + timedelta(days=1),
            status="succeeded",
            invoice="in_other",
            fingerprint="fpB",
            subscription="sub_2",
        ),
        # Nor does a charge whose subscription is unknown.
        stripe_charge(
            "ch_3",
            created=T0 + timedelta(days=1),
            status="succeeded",
            invoice="in_plain",
            fingerprint="fpC",
        ),
    ]
    await ingest(db, connection, elsewhere, T0 + timedelta(days=1))
    after = await reload(db, payment.id)
    assert after.state is P.NOT_RETRYABLE
    assert after.credential_since is None
    assert [t.event for t in await timeline(db, payment.id)] == ["failure_ingested"]
