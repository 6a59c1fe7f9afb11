"""Ingestion attributes attempts and recoveries to who made them (docs/actors.md), places
customers (docs/domain.md §5), and a replay re-attributes history."""

import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from app.clock import SystemClock
from app.db import Database
from app.enums import Actor, AttemptOutcome, PaymentState, Processor
from app.models.customer import Customer
from app.models.ingestion import ProcessorConnection, RawRecord
from app.models.payment import Payment, PaymentAttempt
from app.processors.base import RawItem
from app.tenancy import SYSTEM_SCOPE
from app.workflows.replay import replay_connection
from tests.support.factories import make_merchant
from tests.support.ingestion import T0, invoiced_charge
from tests.support.normalize import PROCESSOR_FIXTURES
from tests.support.retry import (
    attempts_of,
    decide,
    land_items,
    land_records,
    make_connection,
    reload,
    stripe_charge,
)


async def _connection(db: Database, kind: Processor = Processor.STRIPE) -> ProcessorConnection:
    merchant = await make_merchant(db, f"Actors {uuid.uuid4().hex[:6]}", now=T0)
    return await make_connection(db, merchant, T0, kind=kind)


def _item(processor: Processor, name: str) -> RawItem:
    body = (PROCESSOR_FIXTURES / processor.value / name).read_text()
    if processor is Processor.BRAINTREE:
        return RawItem.from_xml(body.split("?>", 1)[-1].strip(), name)
    return RawItem.from_json(json.loads(body), name)


async def _payments(db: Database, connection: ProcessorConnection) -> list[Payment]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(select(Payment).where(col(Payment.connection_id) == connection.id))
        return list(rows.scalars())


# A failure, then the success that pays its invoice, in each processor's format.
FAILURES = {
    Processor.STRIPE: ("payment_intent_failed.json", Actor.BILLING_SYSTEM),
    Processor.BRAINTREE: ("transaction_processor_declined.xml", Actor.BILLING_SYSTEM),
    Processor.ADYEN: ("notification_batch.json", Actor.PROCESSOR),
    Processor.CHECKOUT: ("payment_declined.json", Actor.BILLING_SYSTEM),
}
SUCCESSES: list[tuple[Processor, str, Actor]] = [
    (Processor.BRAINTREE, "transaction_subscription_retry.xml", Actor.BILLING_SYSTEM),
    (Processor.BRAINTREE, "transaction_customer_checkout.xml", Actor.CUSTOMER),
    (Processor.BRAINTREE, "transaction_braintree_retried.xml", Actor.PROCESSOR),
    (Processor.BRAINTREE, "transaction_portal_retry.xml", Actor.PORTAL),
    (Processor.ADYEN, "notification_contauth_subscription.json", Actor.BILLING_SYSTEM),
    (Processor.ADYEN, "notification_pay_by_link.json", Actor.CUSTOMER),
    (Processor.ADYEN, "notification_autorescue.json", Actor.PROCESSOR),
    (Processor.ADYEN, "notification_portal_retry.json", Actor.PORTAL),
    (Processor.CHECKOUT, "payment_recurring_approved.json", Actor.BILLING_SYSTEM),
    (Processor.CHECKOUT, "payment_regular_3ds.json", Actor.CUSTOMER),
    (Processor.CHECKOUT, "payment_portal_retry.json", Actor.PORTAL),
]


@pytest.mark.parametrize(
    ("processor", "success", "actor"),
    SUCCESSES,
    ids=[f"{p.value}-{name.split('.')[0]}" for p, name, _ in SUCCESSES],
)
async def test_a_recovery_is_attributed_to_the_actor_of_the_charge_that_paid(
    db: Database, processor: Processor, success: str, actor: Actor
) -> None:
    connection = await _connection(db, processor)
    failure, first_actor = FAILURES[processor]
    await land_items(db, connection, [_item(processor, failure)], T0)
    await land_items(db, connection, [_item(processor, success)], T0 + timedelta(days=3))
    recovered = [p for p in await _payments(db, connection) if p.state is PaymentState.RECOVERED]
    [payment] = recovered
    assert payment.recovered_by is actor
    attempts = await attempts_of(db, payment.id)
    assert [(a.actor, a.outcome) for a in attempts] == [
        (first_actor, AttemptOutcome.DECLINED),
        (actor, AttemptOutcome.SUCCEEDED),
    ]


async def test_stripe_billing_retry_and_hosted_page_payment(db: Database) -> None:
    connection = await _connection(db)
    await land_records(
        db,
        connection,
        [invoiced_charge("ch_1", invoice="in_1"), invoiced_charge("ch_2", invoice="in_2")],
        T0,
    )
    paid = [
        invoiced_charge("ch_3", status="succeeded", invoice="in_1", created=T0 + timedelta(1)),
        stripe_charge(
            "ch_4", created=T0 + timedelta(2), status="succeeded", invoice="in_2", secure=True
        ),
    ]
    await land_records(db, connection, paid, T0 + timedelta(days=2))
    by_charge = {p.processor_payment_id: p for p in await _payments(db, connection)}
    assert by_charge["ch_1"].recovered_by is Actor.BILLING_SYSTEM
    assert by_charge["ch_2"].recovered_by is Actor.CUSTOMER


async def test_the_portals_declined_retry_read_first_opens_no_payment(db: Database) -> None:
    connection = await _connection(db)
    await land_records(db, connection, [invoiced_charge("ch_1", invoice="in_1")], T0)
    # Read back before the retry recorded it, on no invoice that links it (API versions that
    # name none): it is the portal's, and the retry that made it records it.
    echo = stripe_charge("ch_p", created=T0 + timedelta(1), metadata={"retry_of": "ch_1"})
    echo["invoice"] = None
    await land_records(db, connection, [echo], T0 + timedelta(days=1))
    assert [p.processor_payment_id for p in await _payments(db, connection)] == ["ch_1"]


async def test_a_replay_re_attributes_history_but_never_the_portals_attempts(
    db: Database,
) -> None:
    connection = await _connection(db)
    await land_records(db, connection, [invoiced_charge("ch_1")], T0)
    paid = stripe_charge(
        "ch_2", created=T0 + timedelta(days=1), status="succeeded", invoice="in_1", secure=True
    )
    await land_records(db, connection, [paid], T0 + timedelta(days=1))
    [payment] = await _payments(db, connection)
    # As the first normalizer stored them: every attempt and recovery the processor's.
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            sa.update(PaymentAttempt)
            .where(col(PaymentAttempt.payment_id) == payment.id)
            .values(actor=Actor.PROCESSOR)
        )
        await uow.session.execute(
            sa.update(Payment)
            .where(col(Payment.id) == payment.id)
            .values(recovered_by=Actor.PROCESSOR)
        )
        await uow.session.execute(
            sa.update(RawRecord)
            .where(col(RawRecord.connection_id) == connection.id)
            .values(normalizer_version=1)
        )
        await uow.commit()
    await replay_connection(db, connection.id, since=None, clock=SystemClock())
    assert (await reload(db, payment.id)).recovered_by is Actor.CUSTOMER
    assert [a.actor for a in await attempts_of(db, payment.id)] == [
        Actor.BILLING_SYSTEM,
        Actor.CUSTOMER,
    ]
    # A recovery the portal recorded as its own stays the portal's, whatever a reading says.
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            sa.update(PaymentAttempt)
            .where(col(PaymentAttempt.processor_attempt_id) == "ch_2")
            .values(actor=Actor.PORTAL)
        )
        await uow.session.execute(
            sa.update(Payment)
            .where(col(Payment.id) == payment.id)
            .values(recovered_by=Actor.PORTAL)
        )
        await uow.commit()
    await replay_connection(db, connection.id, since=None, clock=SystemClock())
    assert (await reload(db, payment.id)).recovered_by is Actor.PORTAL
    assert [a.actor for a in await attempts_of(db, payment.id)][-1] is Actor.PORTAL


async def _customer(db: Database, merchant_id: uuid.UUID, ref: str) -> Customer:
    async with db.session(SYSTEM_SCOPE) as s:
        found = await s.scalar(
            select(Customer).where(
                col(Customer.merchant_id) == merchant_id, col(Customer.external_ref) == ref
            )
        )
    assert found is not None
    return found


async def test_customers_are_placed_by_billing_address_then_issuer_country(
    db: Database,
) -> None:
    connection = await _connection(db)
    merchant_id = connection.merchant_id

    async def read(
        charge_id: str, customer: str, at: int, billing: tuple[str, str | None] | None
    ) -> tuple[str | None, str | None]:
        charge = stripe_charge(
            charge_id,
            created=T0 + timedelta(hours=at),
            status="succeeded",
            customer=customer,
            billing=billing,
        )
        await land_records(db, connection, [charge], T0 + timedelta(hours=at))
        found = await _customer(db, merchant_id, customer)
        return found.country, found.timezone

    # Only the card's issuer (the US, of several clocks): the country, no zone.
    assert await read("ch_a1", "cus_a", 1, None) == ("US", None)
    # A billing address with its state: the state's zone.
    assert await read("ch_a2", "cus_a", 2, ("US", "IL")) == ("US", "America/Chicago")
    # The same country without a state keeps the zone it had.
    assert await read("ch_a3", "cus_a", 3, ("US", None)) == ("US", "America/Chicago")
    # The issuer's country never overrides what a billing address said.
    other_card = stripe_charge(
        "ch_a4", created=T0 + timedelta(hours=4), status="succeeded", customer="cus_a"
    )
    other_card["payment_method_details"]["card"]["country"] = "GB"
    await land_records(db, connection, [other_card], T0 + timedelta(hours=4))
    assert (await _customer(db, merchant_id, "cus_a")).timezone == "America/Chicago"
    # The customer moved: a new billing country replaces both, its zone from the tz database.
    assert await read("ch_a5", "cus_a", 5, ("DE", None)) == ("DE", "Europe/Berlin")
    # A new customer placed at first sight; a batch's billing address beats its issuer country.
    assert await read("ch_b1", "cus_b", 1, ("CA", "BC")) == ("CA", "America/Vancouver")
    both = [
        stripe_charge("ch_c1", created=T0, status="succeeded", customer="cus_c"),
        stripe_charge(
            "ch_c2",
            created=T0 - timedelta(hours=1),
            status="succeeded",
            customer="cus_c",
            billing=("AU", "NSW"),
        ),
    ]
    await land_records(db, connection, both, T0)
    found = await _customer(db, merchant_id, "cus_c")
    assert (found.country, found.timezone) == ("AU", "Australia/Sydney")


async def test_a_decisions_reason_names_the_zone_it_read_local_times_in(db: Database) -> None:
    connection = await _connection(db)
    placed = stripe_charge("ch_1", created=T0, customer="cus_z", billing=("US", "CA"))
    # Only the card's issuer, in a country of several clocks: the customer has no zone.
    unplaced = stripe_charge("ch_2", created=T0, customer="cus_y", fingerprint="fpY")
    await land_records(db, connection, [placed, unplaced], T0)
    await decide(db, T0)
    reasons = {p.processor_payment_id: p.decision_reason for p in await _payments(db, connection)}
    assert reasons["ch_1"] is not None
    assert reasons["ch_1"].endswith("; local time: America/Los_Angeles (the customer's time zone)")
    assert reasons["ch_2"] is not None
    assert reasons["ch_2"].endswith(
        "; local time: UTC (the policy's time zone: the customer has none)"
    )
