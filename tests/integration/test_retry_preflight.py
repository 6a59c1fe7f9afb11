"""Pre-flight before each retry, against the sandbox processors over HTTP.

Each case changes the billing objects behind a scheduled payment at the processor (through
the sandbox's admin events), then runs the payment's attempt with the real adapters: the
sandbox's own views (`/charges`, `/idempotency`) say whether anything was charged, and the
payment's timeline says which transition was recorded.
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.db import Database
from app.enums import Actor, AttemptOutcome, AttemptStatus, PaymentState, Processor
from app.models.customer import CardCredential
from app.tenancy import SYSTEM_SCOPE
from app.workflows.retry_attempt import PREFLIGHT_GIVE_UP
from tests.support.billing import (
    SandboxWorld,
    assert_not_charged,
    attempt,
    claim_one,
    connect_account,
    ingest,
    sandbox_event,
    sandbox_keys,
    sandbox_retries,
    sandbox_world,
)
from tests.support.retry import attempts_of, reload, timeline
from tests.support.sandbox import set_faults

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
P = PaymentState


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[SandboxWorld]:
    async with sandbox_world(NOW) as found:
        yield found


# processor, sandbox event, whether the case needs the charge's invoice, the payment's state
# after, the timeline event, words the timeline reason holds.
STOPS = [
    (Processor.STRIPE, "paid_elsewhere", True, P.RECOVERED, "paid_elsewhere", "processor"),
    (Processor.STRIPE, "invoice_voided", True, P.CANCELED, "invoice_voided", "is void"),
    (Processor.STRIPE, "subscription_canceled", True, P.CANCELED, "subscription_canceled", "is"),
    (Processor.STRIPE, "subscription_ended", True, P.CANCELED, "subscription_canceled", "end"),
    (Processor.STRIPE, "customer_deleted", False, P.CANCELED, "customer_deleted", "deleted"),
    (Processor.BRAINTREE, "subscription_canceled", False, P.CANCELED, "subscription_canceled",
     "is Canceled"),
    (Processor.BRAINTREE, "subscription_ended", False, P.CANCELED, "subscription_canceled",
     "is Expired"),
    (Processor.BRAINTREE, "customer_deleted", False, P.CANCELED, "customer_deleted", "deleted"),
    (Processor.CHECKOUT, "customer_deleted", False, P.CANCELED, "customer_deleted", "deleted"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("processor", "kind", "with_invoice", "state", "event", "words"),
    STOPS,
    ids=[f"{c[0].value}-{c[1]}" for c in STOPS],
)
async def test_pre_flight_stop_makes_no_charge_and_records_the_transition(
    world: SandboxWorld,
    db: Database,
    processor: Processor,
    kind: str,
    with_invoice: bool,
    state: PaymentState,
    event: str,
    words: str,
) -> None:
    connected = await connect_account(world, db, processor, seed=31)
    payment, number = await claim_one(world, db, connected, with_invoice=with_invoice)
    await sandbox_event(world, connected, kind, payment.processor_payment_id)

    result = await attempt(world, db, payment.id, number)

    assert result.status is AttemptStatus.PREVENTED, result
    await assert_not_charged(world, connected, payment)
    after = await reload(db, payment.id)
    assert after.state is state
    if state is P.RECOVERED:
        assert after.recovered_by is Actor.PROCESSOR
    last = (await timeline(db, payment.id))[-1]
    assert (last.from_state, last.to_state, last.event) == (P.RETRYING, state, event)
    assert words in last.reason
    # The unsent attempt is gone: the processor never saw it.
    assert [a.portal_number for a in await attempts_of(db, payment.id)] == [None]


# A processor whose API cannot tell: the retry goes ahead as it did without a pre-flight.
CANNOT_TELL = [
    (Processor.CHECKOUT, "subscription_canceled"),
    (Processor.ADYEN, "subscription_canceled"),
    (Processor.BRAINTREE, "invoice_voided"),
]


@pytest.mark.parametrize(
    ("processor", "kind"), CANNOT_TELL, ids=[f"{p.value}-{k}" for p, k in CANNOT_TELL]
)
async def test_what_the_processor_cannot_tell_does_not_stop_the_retry(
    world: SandboxWorld, db: Database, processor: Processor, kind: str
) -> None:
    connected = await connect_account(world, db, processor, seed=37)
    payment, number = await claim_one(world, db, connected)
    await sandbox_event(world, connected, kind, payment.processor_payment_id)

    result = await attempt(world, db, payment.id, number)

    keys = await sandbox_keys(world, connected)
    if kind == "invoice_voided":
        # Braintree keeps no invoice: the sale itself is refused, so nothing is charged.
        assert result.status is AttemptStatus.ABANDONED, result
        assert keys == {}
    else:
        assert result.status is AttemptStatus.RECORDED, result
        assert list(keys.values()) == [1]


@pytest.mark.parametrize("processor", list(Processor), ids=[p.value for p in Processor])
async def test_new_default_card_is_charged_and_the_attempt_counts_on_it(
    world: SandboxWorld, db: Database, processor: Processor
) -> None:
    connected = await connect_account(world, db, processor, seed=41)
    payment, number = await claim_one(world, db, connected)
    updated = await sandbox_event(world, connected, "card_updated", payment.processor_payment_id)

    result = await attempt(world, db, payment.id, number)

    assert result.status is AttemptStatus.RECORDED, result
    [charge] = [
        r
        for r in await sandbox_retries(world, connected)
        if r["retry_of"] == payment.processor_payment_id
    ]
    # The new card was charged (the sandbox approves a retry on a new card).
    assert (charge["last4"], charge["card_fingerprint"]) == (
        updated["last4"],
        updated["fingerprint"],
    )
    assert charge["outcome"] == "succeeded"
    ours = [a for a in await attempts_of(db, payment.id) if a.portal_number == number]
    [made] = ours
    assert made.payment_method_ref == updated["payment_method"]
    assert made.outcome is AttemptOutcome.SUCCEEDED
    if processor is Processor.ADYEN:
        # Adyen's /payments answer carries no card: the retry's AUTHORISATION notification
        # does, and ingesting it puts the attempt on the card it was made on.
        world.clock.set(world.clock.now() + timedelta(seconds=1))
        await ingest(world, db, connected)
        [made] = [a for a in await attempts_of(db, payment.id) if a.portal_number == number]
    assert made.card_id is not None
    async with db.session(SYSTEM_SCOPE) as s:
        card = await s.get_one(CardCredential, made.card_id)
    assert (card.last4, card.exp_month, card.exp_year) == (
        updated["last4"],
        updated["exp_month"],
        updated["exp_year"],
    )
    assert card.id != payment.card_id
    events = [t.event for t in await timeline(db, payment.id)]
    assert events[-2:] == ["credential_updated", "attempt_succeeded"]
    assert (await reload(db, payment.id)).state is P.RECOVERED


async def test_unchanged_default_card_names_no_payment_method(
    world: SandboxWorld, db: Database
) -> None:
    connected = await connect_account(world, db, Processor.STRIPE, seed=43)
    payment, number = await claim_one(world, db, connected)

    result = await attempt(world, db, payment.id, number)

    assert result.status is AttemptStatus.RECORDED, result
    [made] = [a for a in await attempts_of(db, payment.id) if a.portal_number == number]
    assert made.payment_method_ref is None
    assert made.card_id == payment.card_id
    assert "credential_updated" not in [t.event for t in await timeline(db, payment.id)]


async def test_unanswered_pre_flight_defers_the_attempt_without_charging(
    world: SandboxWorld, db: Database
) -> None:
    """The processor's reads are rate limited: the attempt waits, unsent, and goes through
    once the processor answers; one charge in all."""
    connected = await connect_account(world, db, Processor.STRIPE, seed=47)
    payment, number = await claim_one(world, db, connected)
    await set_faults(world.http, connected.account_id, rate_limit=2)

    deferred = await attempt(world, db, payment.id, number)

    assert deferred.status is AttemptStatus.PENDING, deferred
    assert deferred.detail.startswith("pre-flight")
    await assert_not_charged(world, connected, payment)
    [flying] = [a for a in await attempts_of(db, payment.id) if a.portal_number == number]
    assert (flying.outcome, flying.sent_at) == (AttemptOutcome.IN_FLIGHT, None)
    assert (await reload(db, payment.id)).state is P.RETRYING

    done = await attempt(world, db, payment.id, number)

    assert done.status is AttemptStatus.RECORDED, done
    assert list((await sandbox_keys(world, connected)).values()) == [1]


async def test_pre_flight_unanswered_for_half_an_hour_gives_the_attempt_back(
    world: SandboxWorld, db: Database
) -> None:
    connected = await connect_account(world, db, Processor.BRAINTREE, seed=53)
    payment, number = await claim_one(world, db, connected)
    await set_faults(world.http, connected.account_id, server_error=100)
    world.clock.set(world.clock.now() + PREFLIGHT_GIVE_UP)

    result = await attempt(world, db, payment.id, number)

    assert result.status is AttemptStatus.ABANDONED, result
    await assert_not_charged(world, connected, payment)
    after = await reload(db, payment.id)
    assert after.state is P.SCHEDULED
    assert after.next_retry_at == world.clock.now() + timedelta(hours=1)
    abandoned = [t for t in await timeline(db, payment.id) if t.event == "attempt_abandoned"]
    assert "pre-flight unanswered" in abandoned[-1].reason
    await set_faults(world.http, connected.account_id)
